"""Step 7.3: score image quality with pyiqa and sort into high / medium / low.

- :mod:`.decode`  header reading and pixels as pyiqa loads them (EXIF, ``--max-side``)
- :mod:`.metrics` the pyiqa metrics: creation, weights, the 0-100 scale, MUSIQ tweaks
- :mod:`.scorer`  :class:`~.scorer.Scorer`: settings → loaded models; tasks → rows
- :mod:`.report`  ``quality_report.db``, rows, categories, JSON report, histogram
- :mod:`.cli`     the step as a command (``7_3_separate_images_by_quality.py``)

Nothing here imports torch or pyiqa at import time; piqe on the CPU never imports pyiqa.
"""
