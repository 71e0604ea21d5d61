"""Store-and-forward log on flash: every accepted reading is durable before it counts as taken.

`Log` (edge.store.log) is the whole API; `Files` (edge.store.fs) is the filesystem seam.
Format, guarantees and flash-wear figures: docs/store.md.
"""

from edge.store.fs import Files  # noqa: F401
from edge.store.log import HEADER, Log, StoreError  # noqa: F401
