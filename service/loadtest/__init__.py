"""``flux2-edit loadtest``: latency of any fal-compatible endpoint, as the official client sees it.

The load goes through the official ``fal-client`` (``pip install 'flux2-edit[loadtest]'``), so
what is measured is what users' code sees: this server's URL or fal's hosted service, the same
code path with only the host changed (:mod:`service.loadtest.target`).

Modules, one job each:

* :mod:`~service.loadtest.mixes`: the requests: built-in mixes or a JSON-lines request file;
* :mod:`~service.loadtest.target`: where the requests go, and counting the client's retries;
* :mod:`~service.loadtest.request`: one request through ``fal-client``, timed, as a
  :class:`~service.loadtest.sample.Sample`;
* :mod:`~service.loadtest.plan`: how much load for how long, and the hard caps;
* :mod:`~service.loadtest.runner`: closed and open loops, warm-up, Ctrl-C;
* :mod:`~service.loadtest.stats`: percentiles and the summary of a run;
* :mod:`~service.loadtest.results`: the JSON result file;
* :mod:`~service.loadtest.report`: the self-contained HTML report;
* :mod:`~service.loadtest.progress`: the live status line;
* :mod:`~service.loadtest.compare`: two result files side by side;
* :mod:`~service.loadtest.cli`: the ``flux2-edit loadtest`` command.

Nothing here imports torch, diffusers or the engine: the load test is a client.
"""
