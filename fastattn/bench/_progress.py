"""Progress of a sweep: a tqdm bar on a terminal, and always one line per finished point."""

import sys


class Progress:
    """Reports the points of a sweep as they finish.

    On a terminal with tqdm installed, a bar with an ETA sits under the lines; in
    CI logs (no TTY) or without tqdm, each point prints one ``[i/n] ...`` line.

    Parameters
    ----------
    total : int
        Number of points.
    stream : file-like, optional
        Default ``sys.stdout``.
    enabled : bool, default True
        False prints nothing.
    """

    def __init__(self, total, stream=None, enabled=True):
        self.total = total
        self.done = 0
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self._bar = None
        if enabled and _is_tty(self.stream):
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, file=self.stream, unit="point",
                                 dynamic_ncols=True, leave=False)

    def start(self, label):
        """Show which point is running (on the bar only)."""
        if self._bar is not None:
            self._bar.set_description_str(label)

    def finish(self, line):
        """Record one finished point and print its line."""
        self.done += 1
        if not self.enabled:
            return
        text = f"[{self.done:>{len(str(self.total))}}/{self.total}] {line}"
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
            self._bar.update(1)
        else:
            print(text, file=self.stream, flush=True)

    def close(self):
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _is_tty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
