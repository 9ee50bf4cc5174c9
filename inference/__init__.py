"""The model's inference, below any protocol: a verified checkpoint behind a backend
(``runtime``, ``backends``), the instances it takes (``inputs``) and the typed answer it gives
(``prediction``). Imports ``models`` only; ``service`` and ``training`` build on it."""
