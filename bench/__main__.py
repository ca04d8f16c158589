"""``python -m bench``: the serving benchmark (:mod:`bench.cli`); ``python -m bench --soak ...``: the mixed-route soak
(:mod:`bench.soak`, its own options)."""

import sys

if "--soak" in sys.argv[1:]:
    from bench.soak import main

    sys.exit(main([arg for arg in sys.argv[1:] if arg != "--soak"]))

from bench.cli import main

sys.exit(main())
