"""What every ``liberator`` process shares: the command seam and usage errors, logging, and the
/healthz, /readyz and /metrics server.
"""
