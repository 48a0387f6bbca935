"""mess: music similarity research on MERT."""
__version__ = "0.1.0"
