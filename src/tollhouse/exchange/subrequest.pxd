# C declarations for the compiled build of subrequest.py (setup.py); the .py stays the source.
# Every aggregated or federated request starts subrequests: their setup runs as C.
