"""The lab's kube-scheduler and kube-controller-manager: ``python -m lab.kube.controllers``, one per cluster.

Controllers talk to the cluster's API only through the official ``kubernetes.aio`` client (one event
loop, cancellable on SIGTERM, no threads), list+watch with resourceVersion resume and re-list on 410,
and retry with capped backoff while the API is down. Each module keeps its desired-state logic pure
(objects in, actions out) and its I/O thin:

- :mod:`~lab.kube.controllers.objects` pure helpers on object dicts (selectors, pod state, hashing);
- :mod:`~lab.kube.controllers.actions` the writes controllers ask for, as data;
- :mod:`~lab.kube.controllers.client` the official client, raw JSON reads and writes;
- :mod:`~lab.kube.controllers.informer` informers, work queue, expectations, reconcile loop;
- :mod:`~lab.kube.controllers.scheduler` binds pending Pods to Nodes (``pods/binding``);
- :mod:`~lab.kube.controllers.replicaset`, :mod:`~lab.kube.controllers.deployment`,
  :mod:`~lab.kube.controllers.daemonset`, :mod:`~lab.kube.controllers.endpointslice`,
  :mod:`~lab.kube.controllers.gc` the controllers;
- :mod:`~lab.kube.controllers.manager` shared informers and one TaskGroup.
"""

from lab.kube.controllers.manager import CONTROLLERS, ControllerManager, build, run

__all__ = ["CONTROLLERS", "ControllerManager", "build", "run"]
