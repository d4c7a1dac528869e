"""Open-loop prediction: the model's futures under the data's actions (`experiment`), the PETS-style
ensemble it is compared with (`ensemble`), and their figures (`figures`)."""

from tt.predict.experiment import PredictConfig, predict, sample_continuations

__all__ = ["PredictConfig", "predict", "sample_continuations"]
