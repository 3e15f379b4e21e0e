"""One training loop for every method: it sees a model of one or several tasks, never a method."""

from softprompt.train.config import TrainConfig
from softprompt.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
