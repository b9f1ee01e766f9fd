"""``mltrain tune``: an ASHA hyperparameter search on Ray Tune; every trial a training on the Ray launcher, in a
child run of the search's run.

* :mod:`.space` — the ``--search`` language (``key=choice(a,b)|uniform|loguniform|randint``) and its checks;
* :mod:`.settings` — :class:`SearchSettings`, everything resolved before Ray, fitting trials to the cluster;
* :mod:`.driver` — :func:`tune`: the search's run, Tune's Tuner with ASHA, interrupts;
* :mod:`.trial` — one trial: ``train()`` with the drawn values, its epochs forwarded to Tune, a retry's run;
* :mod:`.reconcile` — watching the trials and closing out their child runs as Tune's outcome says;
* :mod:`.results` — the trials ranked, the table, what the search's run records; :mod:`.tags` — the names.

Failures: inside a trial, Ray Train restarts a lost worker from the trial's last checkpoint (``max_failures``, as
for ``train --engine ray``). If the trial's own actor is lost (its node died), Tune retries the trial; the retry
finds the trial's child run and resumes it from its last checkpoint, in the same run. An attempt lost before its
first epoch leaves no checkpoint: the retry trains from the start in that same run
(``mltrain.tune.lost_attempts`` counts such attempts).
"""

from mltrain.search.driver import tune
from mltrain.search.results import TrialSummary, TuneResult
from mltrain.search.settings import SearchPlan, SearchSettings, place, plan_search
from mltrain.search.space import DEFAULT_SEARCH, Domain, parse_search

__all__ = [
    "DEFAULT_SEARCH",
    "Domain",
    "SearchPlan",
    "SearchSettings",
    "TrialSummary",
    "TuneResult",
    "parse_search",
    "place",
    "plan_search",
    "tune",
]
