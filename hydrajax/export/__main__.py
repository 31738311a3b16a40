"""`python -m hydrajax.export` is not a command: say which one is."""
import sys

if __name__ == "__main__":
  print("error: hydrajax.export is a package, not a command; run `hydrajax-export ...` or "
        "`python -m hydrajax export ...` (--help for its arguments)", file=sys.stderr)
  sys.exit(2)
