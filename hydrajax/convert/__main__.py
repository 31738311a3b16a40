"""`python -m hydrajax.convert` is not a command: say which one is."""
import sys

if __name__ == "__main__":
  print("error: hydrajax.convert is a package, not a command; run `hydrajax-convert ...` or "
        "`python -m hydrajax convert ...` (--help for its arguments)", file=sys.stderr)
  sys.exit(2)
