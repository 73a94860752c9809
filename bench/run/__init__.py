"""Running a suite: the runner (claims, records, resume), one cell's job in its own process, the zoo
builder and the progress display. Imports torch only inside the cell's process."""
