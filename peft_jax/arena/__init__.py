"""The PEFT-Arena study: offline world, stages, pipeline."""
