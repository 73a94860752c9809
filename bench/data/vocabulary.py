"""The closed word list of the bundled datasets; the tiny presets' word-level tokenizer is built from it.

Every caption, question and answer the bundled generators write uses only these words, so
the tiny models never see an unknown token on bundled data (a test checks this).
"""

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "cyan")
SHAPES = ("circle", "square", "triangle", "cross")
SHAPES_PLURAL = ("circles", "squares", "triangles", "crosses")
COUNTS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")  # in captions
# how VQA annotators answer a count (VQA v2's answers are digits), and what the official accuracy expects: it turns a
# predicted "two" into "2" and leaves ten identical answers as written
DIGITS = tuple(str(n) for n in range(10))
POSITIONS = ("left", "right", "top", "bottom", "center")
POSITION_SYNONYMS = {"center": "middle"}  # an accepted second answer, as VQA annotators disagree
SIZES = ("small", "large")
BACKGROUNDS = ("dark", "light", "gray")
FUNCTION_WORDS = (
    "a", "an", "the", "of", "on", "in", "at", "is", "are", "there", "it", "and", "with",
    "photo", "picture", "image", "shape", "shapes", "color", "colour", "what", "which",
    "how", "many", "where", "side", "background", "digit", "number", "handwritten",
    "yes", "no", "this", "that", "show", "shows", "does", "do", "has", "have", "one's",
    "describe", "answer", "word", "single", "?", ".", ",", ":",
)

WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        COLORS + SHAPES + SHAPES_PLURAL + COUNTS + POSITIONS + tuple(POSITION_SYNONYMS.values())
        + SIZES + BACKGROUNDS + FUNCTION_WORDS + DIGITS  # digits last: the earlier words keep their ids
    )
)
