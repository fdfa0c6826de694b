"""The default job (``repa demo`` / ``make demo``): REPA against its vanilla twin on Fashion-MNIST latents."""
from repa.demo.config import ARMS, DemoConfig
from repa.demo.pipeline import run_demo

__all__ = ["ARMS", "DemoConfig", "run_demo"]
