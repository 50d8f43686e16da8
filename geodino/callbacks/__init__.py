"""Lightning callbacks: the run summary, k-NN monitoring and the collapse guard."""

from geodino.callbacks.collapse import CollapseCheck, CollapseGuard
from geodino.callbacks.knn import KNNMonitor
from geodino.callbacks.summary import RunVerdict, TrainingSummary

__all__ = ["CollapseCheck", "CollapseGuard", "KNNMonitor", "RunVerdict", "TrainingSummary"]
