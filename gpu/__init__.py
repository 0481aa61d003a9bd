"""evserve.gpu: the execution engine — model repository, python-backend compatibility, workers, device memory."""
