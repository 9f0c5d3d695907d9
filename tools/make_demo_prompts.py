"""Write the demo's prompt sets, made by the project: seeded, from the hand-written content in
``tools/demo_prompts.yaml``, nothing downloaded.

``python tools/make_demo_prompts.py`` (from the repository root) rewrites
``eagle_ext/demo/assets/prompts_train.jsonl`` (2,000 prompts) and ``prompts_heldout.jsonl`` (100), which
``eagle-ext regenerate`` answers with the target to make the draft's training and evaluation chats. Same seed,
same content, same files (``tests/test_regenerate.py`` checks the committed ones are what this script writes).

How a prompt is made: a *task* (explain, write, code, math, list, rewrite, advise, summarise, classify,
brainstorm, trivia, how-to, compare, define, plan, cook, pros and cons, fun) picks one of several phrasings
and fills it from hand-written content (topics in 20 domains, short passages, reviews, code snippets,
sentences to fix, situations, ...) or from random numbers (math); a *style* then varies the wrapping
(greetings, politeness, length and format requests, casual lower-case typing) where it reads naturally;
some rows get a system prompt.

Multi-turn rows: the earlier assistant turns are left for the target, as ``{"role": "assistant", "content":
null}`` slots that ``eagle-ext regenerate`` fills turn by turn, so every assistant turn the draft trains on
is the target's own. Follow-ups are chosen to fit the task (``Make it shorter.`` after a poem, ``What is the
time complexity?`` after code).

Rows: ``{"messages": [...], "category": task}``. No two prompts are equal (case, punctuation and style wrapping ignored),
and the held-out set is disjoint from training by *subject*: every topic, passage, snippet or question used
by a held-out prompt is kept out of the training prompts, so held-out prompts are unseen, not paraphrases.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
from collections.abc import Callable
from types import SimpleNamespace

import yaml

from eagle_ext._io import atomic_path

__all__ = ["ASSETS_DIR", "CONTENT_FILE", "build_prompt_sets", "load_content", "prompt_pool", "write_prompt_sets"]

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS_DIR = os.path.join(_REPO, "eagle_ext", "demo", "assets")
CONTENT_FILE = os.path.join(_REPO, "tools", "demo_prompts.yaml")
TRAIN_FILE, HELDOUT_FILE = "prompts_train.jsonl", "prompts_heldout.jsonl"


def load_content(path: str | os.PathLike = CONTENT_FILE) -> SimpleNamespace:
    """The hand-written content: one attribute per top-level key of the YAML file (``C.topics``: domain ->
    topics, ``C.trivia``: questions, ...); ``lowerable`` becomes a set."""
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    data["lowerable"] = frozenset(data["lowerable"])
    return SimpleNamespace(**data)


C = load_content()


# --------------------------------------------------------------------------------------------------------
# Tasks: each returns (prompt text, subject, follow-up kind, whether style suffixes read naturally)
# --------------------------------------------------------------------------------------------------------

Task = tuple[str, str, str, bool]


def _topic(rng: random.Random) -> str:
    return rng.choice(C.topics[rng.choice(sorted(C.topics))])


def _explain(rng: random.Random) -> Task:
    t, a = _topic(rng), rng.choice(C.audiences)
    text = rng.choice([
        f"Explain {t} to {a}.", f"What is {t}?", f"How does {t} work?", f"Can you give me a simple explanation of {t}?",
        f"I never really understood {t}. Could you break it down for me?", f"Why is {t} important?",
        f"Give me a short overview of {t}.", f"What are the key ideas behind {t}?", f"Teach me the basics of {t}.",
        f"Explain {t} in three sentences.", f"What would {a} need to know about {t}?", f"Describe {t} using an analogy.",
        f"What are the most common misunderstandings about {t}?", f"Write a short lesson about {t} for {a}.",
    ])
    return text, t, "explain", True


def _write(rng: random.Random) -> Task:
    form, subject_ok = rng.choice(C.writing_forms)
    if form == "an acrostic poem":
        word = rng.choice(C.acrostic_words)
        return f"Write an acrostic poem for the word {word}.", word, "write", False
    s = rng.choice(C.writing_subjects)
    text = rng.choice([f"Write {form} about {s}.", f"Could you write {form} about {s}?", f"I need {form} about {s}.",
                       f"Compose {form} inspired by {s}.", f"Write {form} about {s} for a child."])
    return text, s, "write", False


def _email(rng: random.Random) -> Task:
    r, p = rng.choice(C.email_recipients), rng.choice(C.email_purposes)
    text = rng.choice([f"Write an email to {r} {p}.", f"Help me write a short message to {r} {p}.",
                       f"Draft a polite email to {r} {p}."])
    return text, f"{r}|{p}", "email", False


def _promo(rng: random.Random) -> Task:
    x = rng.choice(C.products)
    return rng.choice(C.writing_extras).format(x=x), x, "write", False


def _code(rng: random.Random) -> Task:
    lang, task = rng.choice(C.languages), rng.choice(C.code_tasks)
    text = rng.choice([f"Write a {lang} function that {task}.", f"Show me {lang} code that {task}.",
                       f"Implement a function in {lang} which {task}. Include a short example of using it.",
                       f"How would you write a program in {lang} that {task}?",
                       f"Can you write {lang} code that {task}? Keep it simple.", f"I need a {lang} snippet that {task}."])
    return text, task, "code", False


def _sql_shell(rng: random.Random) -> Task:
    if rng.random() < 0.5:
        task = rng.choice(C.sql_tasks)
        return rng.choice([f"Write an SQL query that {task}.", f"How do I write a SQL query that {task}?"]), task, "code", False
    task = rng.choice(C.shell_tasks)
    return rng.choice([f"How do I {task} from the Linux command line?", f"What shell command would {task}?",
                       f"Give me a bash one-liner to {task}."]), task, "code", False


def _code_concept(rng: random.Random) -> Task:
    c = rng.choice(C.code_concepts)
    text = rng.choice([f"Explain {c}.", f"Can you explain {c} with a small example?", f"In simple words, can you explain {c}?",
                       f"I'm learning to program. Can you tell me {c}?", f"Explain {c} to a beginner."])
    return text, c, "explain", True


def _code_snippet(rng: random.Random) -> Task:
    lang, code = rng.choice(C.code_snippets)
    ask = rng.choice(["What does this {l} code do?", "Is there a bug in this {l} code?", "Can you explain this {l} snippet line by line?",
                      "How could this {l} code be improved?", "What will this {l} code print or return, and why?"])
    return f"{ask.format(l=lang)}\n\n```\n{code}\n```", code, "code", False


def _regex(rng: random.Random) -> Task:
    r = rng.choice(C.regexes)
    return rng.choice([f"What does the regular expression {r} match?", f"Explain this regex: {r}"]), r, "code", False


def _math(rng: random.Random) -> Task:
    k = rng.randrange(16)
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 20)
    if k == 0:
        text = f"What is {rng.choice([5, 10, 12, 15, 20, 25, 30, 40, 75])}% of {rng.randint(20, 2000)}?"
    elif k == 1:
        x = rng.randint(-10, 15)
        text = f"Solve for x: {c}x + {a} = {c * x + a}."
    elif k == 2:
        h = rng.choice([2, 3, 4, 5])
        text = f"A train travels {h * rng.randint(40, 120)} km in {h} hours. What is its average speed?"
    elif k == 3:
        n, p = rng.randint(2, 9), rng.randint(2, 15)
        item = rng.choice(["notebook", "apple", "ticket", "pen", "coffee", "sandwich"])
        text = f"If I buy {n} {item}s at ${p} each and pay with a ${max(20, (n * p // 10 + 1) * 10)} note, how much change do I get?"
    elif k == 4:
        text = rng.choice([f"What is the area of a rectangle that is {a} m by {c} m?", f"What is the area of a circle with radius {c} cm?",
                           f"What is the perimeter of a square with sides of {a} cm?", f"What is the volume of a cube with edges of {c} cm?"])
    elif k == 5:
        text = f"Convert {rng.randint(-20, 110)} degrees Fahrenheit to Celsius."
    elif k == 6:
        text = rng.choice([f"What is {a * 7} times {b}?", f"Compute {a * 13} + {b * 11} - {c * 3}.", f"What is {a * b} divided by {b}?"])
    elif k == 7:
        text = f"Is {rng.randint(50, 999)} a prime number? Explain how you checked."
    elif k == 8:
        xs = [rng.randint(1, 100) for _ in range(rng.randint(4, 7))]
        text = f"What is the average of {', '.join(map(str, xs))}?"
    elif k == 9:
        text = f"A recipe needs {c} cups of flour for {rng.choice([2, 4, 6])} people. How much flour do I need for {rng.randint(3, 12)} people?"
    elif k == 10:
        text = f"What is the probability of rolling a sum of {rng.randint(2, 12)} with two dice?"
    elif k == 11:
        g = rng.randint(2, 9)
        text = rng.choice([f"Simplify the fraction {a * g}/{b * g}.", f"What is the least common multiple of {a} and {c}?",
                           f"What is the greatest common divisor of {a * g} and {b * g}?"])
    elif k == 12:
        text = rng.choice([f"Differentiate f(x) = {c}x^3 + {a}x^2 - {b}x.", f"What is the integral of {c}x^2 + {a}?",
                           f"Find the slope of the line through ({c}, {a}) and ({c + rng.randint(1, 9)}, {b})."])
    elif k == 13:
        text = f"How many seconds are in {c} hours and {a % 60} minutes?"
    elif k == 14:
        price = rng.randint(20, 200)
        text = f"A jacket costs ${price} after a {rng.choice([10, 20, 25, 30, 40, 50])}% discount. What was the original price?"
    else:
        text = f"If I invest ${rng.choice([500, 1000, 2500, 5000, 10000])} at {rng.randint(2, 9)}% interest compounded yearly, how much will I have after {c} years?"
    return text, text, "math", rng.random() < 0.5


def _list(rng: random.Random) -> Task:
    thing, n = rng.choice(C.list_things), rng.randint(3, 10)
    text = rng.choice([f"List {n} {thing}.", f"Give me {n} {thing}.", f"What are some {thing}?", f"Can you name {n} {thing}?",
                       f"Make a list of {thing}.", f"I need {n} {thing}, with a short note on each."])
    return text, thing, "list", True


def _rewrite(rng: random.Random) -> Task:
    s, op = rng.choice(C.sentences), rng.choice(C.rewrite_ops)
    return (f"{op} {s}" if rng.random() < 0.6 else f"{op}\n\n{s}"), s, "text", False


def _passage(rng: random.Random) -> Task:
    p, op = rng.choice(C.passages), rng.choice(C.passage_ops)
    return rng.choice([f"{op}\n\n{p}", f"{p}\n\n{op}"]), p[:60], "text", False


def _classify(rng: random.Random) -> Task:
    k = rng.randrange(5)
    if k == 0:
        r = rng.choice(C.reviews)
        return rng.choice([f"Classify the sentiment of this review as positive, negative or neutral: \"{r}\"",
                           f"Is this review positive or negative? {r}", f"Rate the sentiment of this review from 1 to 5 and explain: {r}"]), r, "text", False
    if k == 1:
        h = rng.choice(C.headlines)
        return f"Which category fits this headline best: {C.headline_labels}?\n\"{h}\"", h, "text", False
    if k == 2:
        s = rng.choice(C.statements)
        return rng.choice([f"Is this a fact or an opinion? \"{s}\"", f"Fact or opinion: {s} Explain briefly."]), s, "text", False
    if k == 3:
        o = rng.choice(C.odd_one_out)
        return f"Which is the odd one out, and why: {o}?", o, "text", False
    m = rng.choice(C.spam_messages)
    return rng.choice([f"Is this message spam? \"{m}\"", f"Should I trust this message? {m}"]), m, "text", False


def _brainstorm(rng: random.Random) -> Task:
    x, n = rng.choice(C.brainstorm), rng.randint(3, 12)
    text = rng.choice([f"Brainstorm {n} {x}.", f"Give me some {x}.", f"I need ideas: {x}.", f"Come up with {n} {x}.",
                       f"Help me think of {x}."])
    return text, x, "list", False


def _trivia(rng: random.Random) -> Task:
    q = rng.choice(C.trivia)
    return q, q, "general", True


def _howto(rng: random.Random) -> Task:
    h = rng.choice(C.howto)
    text = rng.choice([f"How do I {h}?", f"What's the best way to {h}?", f"Can you explain how to {h}?",
                       f"Give me step-by-step instructions to {h}.", f"I want to {h}. Where do I start?", f"Any tips on how to {h}?"])
    return text, h, "howto", True


def _advice(rng: random.Random) -> Task:
    s = rng.choice(C.advice)
    text = rng.choice([f"{s[0].upper()}{s[1:]}. What should I do?", f"I need some advice: {s}.", f"{s[0].upper()}{s[1:]}. Any advice?",
                       f"What would you do if {_second_person(s)}?",
                       f"{s[0].upper()}{s[1:]}. How should I handle this?"])
    return text, s, "advice", True


def _second_person(s: str) -> str:
    for a, b in (("I'm ", "you're "), ("I ", "you "), ("my ", "your "), (" me ", " you ")):
        s = s.replace(a, b)
    return s


def _compare(rng: random.Random) -> Task:
    a, b = rng.choice(C.pairs)
    text = rng.choice([f"Compare {a} and {b}.", f"What is the difference between {a} and {b}?", f"{a[0].upper()}{a[1:]} or {b}: which is better?",
                       f"What are the main differences between {a} and {b}?", f"How do {a} and {b} compare?"])
    return text, f"{a}|{b}", "compare", True


def _define(rng: random.Random) -> Task:
    w = rng.choice(C.words)
    return rng.choice(C.word_ops).format(w=w), w, "general", False


def _plan(rng: random.Random) -> Task:
    if rng.random() < 0.5:
        city, n = rng.choice(C.cities), rng.randint(2, 6)
        return rng.choice(C.plans).format(city=city, n=n), city, "plan", False
    tpl = rng.choice(C.routines)
    fill = {"diet": rng.choice(C.diets), "exam": rng.choice(C.exams), "goal": rng.choice(C.goals), "who": rng.choice(C.who),
            "n": rng.randint(2, 8)}
    text = tpl.format(**fill)
    return text, text, "plan", False


def _cook(rng: random.Random) -> Task:
    if rng.random() < 0.6:
        d = rng.choice(C.dishes)
        return rng.choice([f"How do I make {d}?", f"Give me a simple recipe for {d}.", f"What do I need to make {d}?",
                           f"What's the secret to great {d}?"]), d, "cook", True
    i = rng.choice(C.ingredients)
    return rng.choice([f"What can I cook with {i}?", f"I only have {i} at home. What should I make for dinner?"]), i, "cook", False


def _pros_cons(rng: random.Random) -> Task:
    x = rng.choice(C.pros_cons)
    return rng.choice([f"What are the pros and cons of {x}?", f"Give me arguments for and against {x}.", f"Is {x} a good idea?",
                       f"Write a balanced paragraph about {x}."]), x, "compare", True


def _fun(rng: random.Random) -> Task:
    x = rng.choice(C.fun_things)
    return rng.choice(C.fun).format(x=x), x, "general", False


#: (task, weight): roughly how often each appears.
TASKS: list[tuple[Callable[[random.Random], Task], float]] = [
    (_explain, 14), (_write, 8), (_email, 4), (_promo, 2), (_code, 9), (_sql_shell, 3), (_code_concept, 4),
    (_code_snippet, 3), (_regex, 1), (_math, 9), (_list, 6), (_rewrite, 5), (_passage, 5), (_classify, 5),
    (_brainstorm, 4), (_trivia, 6), (_howto, 6), (_advice, 5), (_compare, 4), (_define, 3), (_plan, 3),
    (_cook, 3), (_pros_cons, 3), (_fun, 3),
]

def _style(rng: random.Random, text: str, suffix_ok: bool) -> str:
    if rng.random() < 0.15 and len(text.split("\n", 1)[0]) < 120:  # not in front of a passage
        prefix = rng.choice(C.prefixes + (C.question_prefixes if text.endswith("?") else []))
        lower = prefix.endswith(", ") and text.split(" ", 1)[0] in C.lowerable
        text = prefix + (text[0].lower() + text[1:] if lower else text)
    if suffix_ok and rng.random() < 0.3:
        text += rng.choice(C.suffixes)
    if "\n" not in text and "`" not in text and rng.random() < 0.08:  # typed in a hurry
        text = text.lower().rstrip(".?!")
    return text


def _normal(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def prompt_pool(size: int, seed: int = 0) -> list[dict]:
    """``size`` distinct prompts: ``{"messages", "category", "subject"}`` (``subject``: the content item used,
    for keeping held-out prompts unseen). No two first user turns are equal ignoring case, punctuation and the
    style wrapping.

    Raises:
        ValueError: ``size`` < 1, or the generator cannot make ``size`` distinct prompts.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    rng = random.Random(seed)
    tasks, weights = zip(*TASKS)
    seen: set[str] = set()
    rows = []
    attempts = 0
    while len(rows) < size:
        attempts += 1
        if attempts > 50 * size:
            raise ValueError(f"could only make {len(rows)} distinct prompts of the {size} asked for")
        task = rng.choices(tasks, weights)[0]
        core, subject, follow_kind, suffix_ok = task(rng)
        key = _normal(core)  # distinct before styling: a greeting or "Thanks!" does not make a new prompt
        if key in seen:
            continue
        seen.add(key)
        text = _style(rng, core, suffix_ok)
        messages = []
        if rng.random() < 0.08:
            messages.append({"role": "system", "content": rng.choice(C.system_prompts)})
        messages.append({"role": "user", "content": text})
        turns = rng.random()
        follow = C.follow_ups[follow_kind] + C.follow_ups["general"][:2]
        for _ in range(2 if turns < 0.03 else 1 if turns < 0.18 else 0):  # ~15% two turns, ~3% three
            messages.append({"role": "assistant", "content": None})
            messages.append({"role": "user", "content": rng.choice([f for f in follow if f != messages[-2]["content"]])})
        rows.append({"messages": messages, "category": task.__name__.lstrip("_"), "subject": subject})
    return rows


def build_prompt_sets(num_train: int = 2000, num_heldout: int = 100, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(train, heldout)`` rows ``{"messages", "category"}``: held-out first, then training prompts whose subject
    no held-out prompt uses.

    Raises:
        ValueError: a count < 1, or not enough distinct prompts.
    """
    for name, value in (("num_train", num_train), ("num_heldout", num_heldout)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    size = num_heldout + num_train
    while True:
        pool = prompt_pool(int(size * 1.3) + 50, seed)
        heldout = pool[:num_heldout]
        held_subjects = {r["subject"] for r in heldout}
        train = [r for r in pool[num_heldout:] if r["subject"] not in held_subjects]
        if len(train) >= num_train:
            break
        size *= 2
    return ([{k: v for k, v in r.items() if k != "subject"} for r in train[:num_train]],
            [{k: v for k, v in r.items() if k != "subject"} for r in heldout])


def write_prompt_sets(directory: str | os.PathLike = ASSETS_DIR, *, num_train: int = 2000, num_heldout: int = 100,
                      seed: int = 0) -> tuple[str, str]:
    """Write ``prompts_train.jsonl`` and ``prompts_heldout.jsonl`` into ``directory`` (atomically);
    returns their paths."""
    train, heldout = build_prompt_sets(num_train, num_heldout, seed)
    paths = []
    for name, rows in ((TRAIN_FILE, train), (HELDOUT_FILE, heldout)):
        path = os.path.join(os.fspath(directory), name)
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the demo's prompt sets (train and held-out).")
    parser.add_argument("--out-dir", default=ASSETS_DIR)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-heldout", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train, heldout = write_prompt_sets(args.out_dir, num_train=args.num_train, num_heldout=args.num_heldout, seed=args.seed)
    print(f"wrote {train} ({args.num_train} prompts) and {heldout} ({args.num_heldout})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
