"""How jobs end up: the ``outcome`` label values of ``clusterplex_jobs_total`` (pure names).

The orchestrator counts a job once in
remote_ok, remote_failed, cancelled or no_worker, and resumed and fell_back_local as they
happen (a job without a worker that Plex then runs locally counts in no_worker and in
fell_back_local). The relay counts, with a ``why`` label, what the shim on its host runs
locally without the orchestrator knowing: forced_local (mode local, detection passes,
local_rules) and fell_back_local when the cluster was unreachable. Sum both by outcome.
"""

REMOTE_OK = "remote_ok"
REMOTE_FAILED = "remote_failed"
CANCELLED = "cancelled"
NO_WORKER = "no_worker"
FELL_BACK_LOCAL = "fell_back_local"
FORCED_LOCAL = "forced_local"
RESUMED = "resumed"
OUTCOMES = (REMOTE_OK, REMOTE_FAILED, CANCELLED, NO_WORKER, FELL_BACK_LOCAL, RESUMED)
SHIM_EVENTS = {FORCED_LOCAL: ("mode_local", "detection", "local_rules"), FELL_BACK_LOCAL: ("cluster_unreachable",)}
