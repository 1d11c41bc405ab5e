"""``python -m gateway`` is the ``s3-upload-gateway`` command."""

import sys

from gateway.cli import main

sys.exit(main())
