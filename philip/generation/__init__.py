"""The generation vocabulary every service shares: request parameters and their validation
(``requests.py``), their protobuf codec (``codec.py``) and the names of generation jobs in the store
(``jobs.py``). Services stand side by side over it and never import one another."""
