"""The default job (``repa demo`` / ``make demo``): REPA against its vanilla twin on Fashion-MNIST."""
from repa.demo.pipeline import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
