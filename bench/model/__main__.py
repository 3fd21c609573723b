"""``python bench/model [switches]``: the model's command line (see ``python bench/model --help``)."""

import sys
from pathlib import Path

# run as a directory, this file is a script: the package's parent (bench/, where fanout.py and
# launch.py are) must be on the path for ``model`` and its siblings to import
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.main import main

sys.exit(main())
