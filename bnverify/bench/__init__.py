"""Benchmarks of a batch-norm target (the ``bench`` suite): honest timing, a measured roofline, a perf gate.

* ``roofline``: the bytes each operation must move (minimal and two-pass), GB/s, percent of roofline;
* ``timers``: interleaved arms (target, torch's native batch norm, a copy) with the cache flushed
  before each call -- on the CPU through pytest-benchmark's ``benchmark.pedantic`` (a
  ``time.perf_counter`` loop when it is disabled), on a GPU with CUDA events per call;
* ``ops``: each operation of an instance as a timed call;
* ``stats``: medians, quartiles and the median's distribution-free confidence interval;
* ``report``: one case's numbers, the console table, the plot and the benchmark JSON;
* ``gate``: the comparison with a baseline run, failing only beyond the two runs' noise;
* ``env``: device, clocks and versions recorded with every run.
"""
