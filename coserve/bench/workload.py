"""The serve benchmark's workload: prompts of its own, Poisson arrivals, the router's expert each.

The prompts below were written for the benchmark and are none of the classifier's training
examples (a test checks that against every category of the default library), so the router sees
them as it would see users' prompts. A run draws each prompt at most once unless it asks for
repeats. It knows nothing about servers or residencies.
"""

from __future__ import annotations

import random
from typing import Any

from coserve.config import LibraryConfig
from coserve.errors import ConfigError
from coserve.paths import cache_dir
from coserve.router.router import CoERouter
from coserve.types import Message, Request

__all__ = ["MIX", "PROMPTS", "make_workload"]

MIX = {"chat": 0.35, "code": 0.35, "knowledge": 0.12, "math": 0.10, "writing": 0.08}  # category shares

PROMPTS: dict[str, tuple[str, ...]] = {
    "chat": (
        "Hey, I just got back from a long hike and my legs are sore. Any tips for tomorrow?",
        "I'm bored on a rainy Sunday afternoon. What could I do indoors?",
        "My cat keeps knocking cups off the table. Why do cats do that?",
        "Can you cheer me up? I failed my driving test this morning.",
        "What's a good name for a small orange kitten?",
        "I have a job interview on Friday and I'm nervous. Any advice?",
        "Tell me something interesting about octopuses.",
        "What should I cook tonight with rice, eggs and some spinach?",
        "My friend forgot my birthday. Should I say something?",
        "Suggest a fun board game for four adults.",
        "I can't sleep. Can you talk to me for a bit?",
        "What do you think makes a good weekend?",
        "I'm thinking about learning the guitar at 40. Is it too late?",
        "Give me three ideas for a picnic with kids.",
        "How do I politely decline a wedding invitation?",
        "Recommend a relaxing hobby that doesn't cost much.",
        "I just moved to a new city and don't know anyone. How do people make friends?",
        "What's your favourite season and why?",
        "My plants keep dying on the windowsill. What am I doing wrong?",
        "Say something nice to start my Monday.",
        "Is it weird to eat cereal for dinner?",
        "I want to surprise my partner this weekend. Ideas?",
    ),
    "code": (
        "Write a Python function that merges two sorted lists into one sorted list.",
        "How do I make an HTTP GET request in Node.js without extra libraries?",
        "Explain the difference between a process and a thread, with a small Python example.",
        "Write a shell script that deletes files older than 7 days in /tmp/logs.",
        "In Python, how do I remove duplicates from a list while keeping the order?",
        "Write a JavaScript function that debounces another function.",
        "What is a race condition? Show one in Go and fix it with a mutex.",
        "Write a C function that counts the set bits in an unsigned integer.",
        "How do I rename a branch in git, locally and on the remote?",
        "Write a Python class for a stack with push, pop and peek.",
        "My Python loop over a dictionary raises RuntimeError: dictionary changed size during iteration.",
        "Write a SQL query that finds duplicate email addresses in a users table.",
        "How do I parse command line arguments in Python with argparse? Show an example.",
        "Write a Java method that checks whether a number is prime.",
        "Convert this loop to a list comprehension: out = []; for x in xs: if x > 0: out.append(x * 2)",
        "Write a Rust function that returns the largest element of a slice of i32.",
        "How can I measure how long a Python function takes to run?",
        "Write a regular expression that matches a US ZIP code with an optional 4-digit suffix.",
        "Explain what Big-O of n log n means using merge sort.",
        "Write a Python generator that yields the Fibonacci numbers.",
        "How do I set an environment variable in a Dockerfile?",
        "Write a TypeScript interface for a blog post with title, body, tags and a date.",
    ),
    "knowledge": (
        "Why did the Roman Empire split into east and west?",
        "What causes the seasons on Earth?",
        "Who painted the ceiling of the Sistine Chapel, and how long did it take?",
        "How does a vaccine train the immune system?",
        "Why do volcanoes form along the edges of tectonic plates?",
        "Why is the sky blue during the day and red at sunset?",
        "What were the main causes of the First World War?",
        "What was the Silk Road, and what was traded along it?",
        "What is photosynthesis, in simple terms?",
        "What is the capital of Australia, and why was it chosen?",
        "How does inflation affect savings?",
        "What did Marie Curie discover?",
    ),
    "math": (
        "What is 35% of 180?",
        "Solve for x: 3x - 7 = 11.",
        "A train travels 180 km in 2.5 hours. What is its average speed?",
        "What is the sum of the interior angles of a hexagon?",
        "If I roll two dice, what is the probability that the sum is 7?",
        "Factor the expression x^2 - 5x + 6.",
        "What is the derivative of 4x^3 - 2x?",
        "A rectangle has a perimeter of 30 and a length of 9. What is its area?",
        "How many different 3-letter codes can be made from the letters A to F without repeating?",
        "Compute the mean and median of 3, 8, 1, 9, 4.",
        "What is the least common multiple of 12 and 18?",
    ),
    "writing": (
        "Write a short thank-you note to a colleague who covered my shift.",
        "Draft a two-sentence product description for a steel water bottle.",
        "Write a haiku about the first snow of winter.",
        "Rewrite this sentence to sound more formal: we gotta push the meeting to next week.",
        "Write an opening line for a mystery novel set in a lighthouse.",
        "Summarise the plot of Romeo and Juliet in three sentences.",
        "Write a polite email asking my landlord to fix the heating.",
        "Give me a catchy title for a blog post about saving money on groceries.",
        "Write a limerick about a forgetful robot.",
        "Write a short motivational message for a team before a deadline.",
    ),
}


def make_workload(
    library: LibraryConfig, n: int, rate: float, seed: int, allow_repeats: bool = False
) -> list[dict[str, Any]]:
    """``n`` requests: arrival time (Poisson at ``rate``/s), prompt, category and the router's expert.

    Categories are drawn from ``MIX`` (those the library has); each prompt at most once unless
    ``allow_repeats`` (ConfigError when a category runs out)."""
    rng = random.Random(seed)
    router = CoERouter.load_or_fit(library, cache_dir())
    mix = {k: v for k, v in MIX.items() if k in library.categories and k in PROMPTS}
    if not mix:
        raise ConfigError(f"the library has none of the benchmark's categories ({', '.join(PROMPTS)})")
    names, weights = zip(*mix.items(), strict=True)
    unused = {name: rng.sample(PROMPTS[name], len(PROMPTS[name])) for name in names}
    t = 0.0
    out = []
    for i in range(n):
        t += rng.expovariate(rate)
        category = rng.choices(names, weights)[0]
        if allow_repeats:
            prompt = rng.choice(PROMPTS[category])
        elif unused[category]:
            prompt = unused[category].pop()
        else:
            raise ConfigError(
                f"the benchmark has {len(PROMPTS[category])} {category} prompts and this run needs more: "
                "fewer requests (--n), or allow repeats (--allow-repeats)"
            )
        decision = router.route(Request((Message("user", prompt),), "coserve"))
        out.append({"i": i, "at": t, "prompt": prompt, "category": category, "expert": decision.expert})
    return out
