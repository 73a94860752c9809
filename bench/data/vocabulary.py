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

# The bundled charts (bench/data/charts.py) write only these words and WORDS'. They are kept out of WORDS, which the
# tiny tokenizer's ids come from: a model trained on scenes keeps its vocabulary. CHART_WORDS repeats no word of WORDS
# (the digits "0".."9" are there already), so WORDS + CHART_WORDS is a vocabulary without duplicates.
CHART_ANIMALS = ("cat", "dog", "fox", "owl", "bee", "cow", "pig", "hen")  # a bar chart's categories: short, to fit
CHART_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")  # a line's x axis
CHART_QUESTION_WORDS = (
    "value", "bar", "point", "highest", "lowest", "difference", "between", "higher", "lower", "than",
)
CHART_NUMBERS = tuple(str(n) for n in range(101))  # every value, difference and axis label: integers 0..100

CHART_WORDS: tuple[str, ...] = tuple(
    w for w in dict.fromkeys(CHART_ANIMALS + CHART_MONTHS + CHART_QUESTION_WORDS + CHART_NUMBERS) if w not in WORDS
)
