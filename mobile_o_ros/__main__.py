"""``python -m mobile_o_ros`` is the ``mobile-o`` CLI."""

from mobile_o_ros.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
