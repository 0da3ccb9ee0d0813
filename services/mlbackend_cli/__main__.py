import sys

from mlbackend_cli.main import main

sys.exit(main())
