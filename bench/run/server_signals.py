"""Imported first by the cell-process server (bench/isolate.py), before bench.run.preload: a Ctrl-C ends it quietly.

A terminal's Ctrl-C reaches the whole process group, the server included. multiprocessing makes its server ignore
SIGINT, but only once the preload imports are done (seconds of torch and the model libraries); a Ctrl-C before then
raised KeyboardInterrupt in the middle of an import and printed its traceback under the runner's one-line
"interrupted". Until multiprocessing takes over, SIGINT ends the server at once and silently: the runner owns Ctrl-C,
and a server still importing has started no cell. Nothing else imports this module.
"""

import os
import signal


def _quit(signum, frame):
    os._exit(128 + signum)


signal.signal(signal.SIGINT, _quit)
