"""The reference engine (contract §8, ``sr engine simulate``): the executable documentation of
the engine protocol. ``docs/engine-protocol.md`` explains it for engine authors.

* :mod:`~worker.engine.bundles` — gate bundles as a producer writes them (members,
  ``index.json``, ``_passed.flag`` last); pure layout plus a writer over any
  ``write(bucket, key, body)``. The demo (:mod:`worker.embedded.demo`) writes its sample
  evidence with it too.
* :mod:`~worker.engine.evidence` — what the engine writes for one request: the outputs and
  every gate the request's outputs need under the policy, below its ``evidence_root``.
* :mod:`~worker.engine.simulator` — the deterministic answer to one request (delay, failure
  rate, seed) as an :class:`~worker.core.engine.EngineResult`.
* :mod:`~worker.engine.loop` — the process: a consumer-group member over the requests topic that
  produces one result per request and commits offsets only after the result is acknowledged.

Layering: ``bundles``, ``evidence`` and ``simulator`` use only :mod:`worker.core` (and a
write-once store protocol); ``loop`` gets its clients from :mod:`worker.runtime.compose`, like
a CLI command. Nothing here imports a client SDK.

Import the submodules directly (``from worker.engine.bundles import gate_layout``): importing
this package loads nothing, so the dev-only demo can use :mod:`~worker.engine.bundles`
without pulling in the runtime.
"""
