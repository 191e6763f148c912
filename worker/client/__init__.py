"""SR's public client (contract §9): submit intents, and follow only verified READY facts.

::

    from worker.client import ReadyFollower, signer_from, submit
    from worker.settings import load_settings

    settings = load_settings()                      # SR_* environment / TOML, as for `sr`
    run_id = submit(intent, settings)               # keyed by run_id, SR's framing
    signer = signer_from(None, os.environ)          # the key file in $SR_SIGNING_KEY (None: unset)
    run_id = submit(intent, settings, signer=signer)  # + an sr-signature header (contract §10)

    with ReadyFollower(settings, start="beginning", until_end=True) as follower:
        for fact in follower.facts():               # verified: sha256(facts view) == facts_view_hash
            print(fact.run_id, fact.event.event_type, fact.facts_view)

    with ReadyFollower(settings, group="billing") as follower:
        follower.run(handle)                        # commits only after handle() returned

Everything here is stable API (``__all__``); errors are :class:`worker.errors.SRError`
subclasses.
"""

from __future__ import annotations

from worker.client.follower import Mismatch, ReadyFollower, VerifiedFact, verify_facts_view
from worker.client.producer import submit, submit_many
from worker.core.follow import Decision, FactTracker
from worker.errors import FactsViewMismatchError
from worker.signing import Signer, signer_from

__all__ = [
    "Decision",
    "FactTracker",
    "FactsViewMismatchError",
    "Mismatch",
    "ReadyFollower",
    "Signer",
    "VerifiedFact",
    "signer_from",
    "submit",
    "submit_many",
    "verify_facts_view",
]
