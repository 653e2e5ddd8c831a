# C declarations for the compiled build of aggregate.py (setup.py); the .py stays the source.
# The fan-out and the merge run on every request of an aggregate route: compiled.
