# C declarations for the compiled build of executor.py (setup.py); the .py stays the source.
# Every federated request runs its plan here (entity fetches, the answer shaped): compiled as
# it is, with no types declared, which takes the interpreter's dispatch off its loops.
