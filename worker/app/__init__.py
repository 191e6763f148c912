"""SR's application layer: the services that decide, written against :mod:`worker.app.ports`.

Nothing here imports an SDK or holds SQL; :mod:`worker.app.testing` ships in-memory
implementations of every port for tests (SR's and its users').
"""
