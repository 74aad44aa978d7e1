"""The steps of ``make demo``. ``hack/demo.py`` runs them in order, then shows the status
(step 8) and, interactive, keeps the live view going (step 9).

:mod:`liberator_demo.session` holds the run's state and what every step uses (kubectl with a
transcript, waits with progress lines, the live view of the event store);
:mod:`liberator_demo.install` brings up the node, Liberator, the quickstart and the app (steps
1-4); :mod:`liberator_demo.events` writes quotes, fails the leader over and seeds, checking that
every expected event reaches the event store (steps 5-7).
"""
