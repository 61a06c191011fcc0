"""What a run costs: analytic FLOPs (:mod:`top.measure.flops`, with the model's dimensions
:class:`~top.measure.flops.ModelDims`), pinned-thread latency (:mod:`top.measure.latency`) and
the pinning itself (:mod:`top.measure.pinning`, which imports no torch so that it can run before
torch starts its thread pool). Conventions: ``docs/design.md``, "FLOPs" and "Latency"."""
