"""Training: the Trainer subclass and its loss (trainer.py), the teacher cache, the time budget, the launch and
sharding plumbing (launch.py, distributed.py) and validation during training."""
