"""What ``yoco profile`` measures with, one concern per module (imported one by one, so that needle
evaluation loading ``hardware`` for a device name never loads the profiler):

* ``analytic``: the cost model (FLOPs, bytes, memory estimates) of a ``ModelConfig``;
* ``hardware``: device name / memory / versions, the clock, the measured ceilings;
* ``runners``: our models and the HF / FLA peers behind one small interface;
* ``sweep``: timing one cell, the skip / out-of-memory policy, the result record;
* ``notes``: the markers a row's note carries (read back by ``--resume`` and the report).
"""
