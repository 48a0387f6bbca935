"""Datasets: turn a folder into track ids, audio paths and labels."""
