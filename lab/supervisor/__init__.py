"""The lab's orchestration: its plan (:mod:`~lab.supervisor.spec`), the supervisor process that runs
a lab (:mod:`~lab.supervisor.daemon`), and the sweep that removes one (:mod:`~lab.supervisor.cleanup`)."""
