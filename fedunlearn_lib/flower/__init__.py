"""The unlearning protocol as a Flower app (``pip install -e ".[flower]"``).

- ``client_app.app``: a node's ``train``, ``evaluate`` and ``query`` handlers (``info``: its
  client id and class counts; ``local_proc``: the class x channel matrices of the paper's
  local proc). A node reads its data from its node config: ``partition-id`` (a Fang
  partition of the run's data set, as the in-process simulator draws it) or ``data-dir``
  plus ``client-id`` (its own ``<class>/<images>`` folder).
- ``server_app.app``: pretraining, retraining, the unlearning request and fine-tuning,
  driven by ``experiment.run_experiment`` with ``FlowerClients`` as its remote clients;
  writes the same ``metrics.json`` as the command line.
"""
