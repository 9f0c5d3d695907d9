"""The demo's prompt set, written by the project: seeded, in code, nothing downloaded.

``python -m eagle_ext.demo.prompts`` rewrites ``eagle_ext/demo/assets/prompts_train.jsonl`` (2,000 prompts)
and ``prompts_heldout.jsonl`` (100), which ``eagle-ext regenerate`` answers with the target to make the draft's
training and evaluation chats. Same seed, same files.

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

from eagle_ext._io import atomic_path

__all__ = ["ASSETS_DIR", "build_prompt_sets", "prompt_pool", "write_prompt_sets"]

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
TRAIN_FILE, HELDOUT_FILE = "prompts_train.jsonl", "prompts_heldout.jsonl"

# --------------------------------------------------------------------------------------------------------
# Content
# --------------------------------------------------------------------------------------------------------

TOPICS: dict[str, list[str]] = {
    "physics": ["gravity", "friction", "magnetism", "static electricity", "the speed of light", "black holes",
                "nuclear fusion", "quantum entanglement", "thermodynamics", "sound waves", "inertia",
                "electric circuits", "the Doppler effect", "relativity", "buoyancy"],
    "chemistry": ["chemical bonds", "acids and bases", "oxidation", "the periodic table", "catalysts",
                  "isotopes", "polymers", "pH", "combustion", "crystals", "solutions and solubility"],
    "biology": ["photosynthesis", "DNA replication", "the immune system", "evolution by natural selection",
                "cell division", "the nervous system", "enzymes", "antibiotics", "vaccines", "ecosystems",
                "the human heart", "mitochondria", "bird migration", "sleep cycles", "gut bacteria"],
    "earth": ["plate tectonics", "volcanoes", "the water cycle", "ocean currents", "earthquakes", "glaciers",
              "climate change", "the ozone layer", "hurricanes", "soil erosion", "the seasons", "tides"],
    "space": ["the Moon's phases", "solar eclipses", "exoplanets", "the Big Bang", "the International Space Station",
              "Mars rovers", "comets", "the Milky Way", "neutron stars", "how rockets reach orbit"],
    "computing": ["machine learning", "the internet", "encryption", "operating systems", "databases",
                  "cloud computing", "compilers", "computer memory", "blockchain", "open-source software",
                  "recursion", "hash tables", "version control", "neural networks", "APIs", "web browsers",
                  "computer viruses", "binary numbers", "large language models", "Wi-Fi"],
    "math": ["prime numbers", "probability", "the Pythagorean theorem", "derivatives", "statistics",
             "logarithms", "matrices", "infinity", "the Fibonacci sequence", "fractions", "compound interest",
             "graph theory", "the number pi", "standard deviation"],
    "economics": ["inflation", "supply and demand", "interest rates", "the stock market", "taxes",
                  "globalisation", "recessions", "central banks", "cryptocurrency", "minimum wage", "budgeting",
                  "opportunity cost", "index funds", "credit scores"],
    "history": ["the Roman Empire", "the Industrial Revolution", "the French Revolution", "the Renaissance",
                "ancient Egypt", "the Silk Road", "the printing press", "the Cold War", "the Moon landing",
                "the fall of the Berlin Wall", "the Black Death", "the Vikings", "the invention of writing",
                "the Ottoman Empire", "the American civil rights movement"],
    "society": ["democracy", "human rights", "urbanisation", "social media", "remote work", "public transport",
                "universal basic income", "volunteering", "the four-day work week", "online privacy"],
    "health": ["a balanced diet", "regular exercise", "stress", "hydration", "vitamin D", "posture",
               "meditation", "caffeine", "sleep hygiene", "stretching", "screen time", "sugar"],
    "psychology": ["motivation", "habits", "memory", "procrastination", "confirmation bias", "emotional intelligence",
                   "burnout", "growth mindset", "introversion", "decision fatigue"],
    "arts": ["impressionism", "jazz", "Shakespeare's plays", "the Mona Lisa", "photography", "opera",
             "graphic novels", "street art", "classical music", "film noir", "poetry", "ballet"],
    "language": ["idioms", "the passive voice", "metaphors", "how languages change", "sign language",
                 "learning a second language", "punctuation", "dialects", "etymology"],
    "nature": ["bees", "octopuses", "rainforests", "coral reefs", "wolves", "mushrooms", "deserts",
               "elephants", "whales", "ants", "owls", "tardigrades", "penguins", "redwood trees"],
    "food": ["fermentation", "bread baking", "coffee", "spices", "vegetarian cooking", "chocolate",
             "food preservation", "umami", "sourdough", "tea"],
    "sports": ["football tactics", "marathon training", "the Olympic Games", "chess openings", "cycling",
               "swimming technique", "basketball", "yoga", "rock climbing", "tennis scoring"],
    "technology": ["electric cars", "solar panels", "3D printing", "smartphones", "self-driving cars",
                   "drones", "wind turbines", "GPS", "batteries", "virtual reality", "smart homes"],
    "philosophy": ["free will", "stoicism", "utilitarianism", "the trolley problem", "existentialism",
                   "ethics of artificial intelligence", "the meaning of life", "Plato's cave"],
    "everyday": ["mortgages", "recycling", "composting", "renting an apartment", "job interviews",
                 "public speaking", "time management", "houseplants", "first aid", "saving energy at home"],
}

AUDIENCES = ["a five-year-old", "a ten-year-old", "a high school student", "a complete beginner",
             "my grandmother", "a busy manager", "a university student", "someone who hates maths",
             "a non-native English speaker", "an engineer from another field"]

LANGUAGES = ["Python", "Python", "Python", "JavaScript", "TypeScript", "Java", "C", "C++", "Rust", "Go", "Ruby",
             "C#", "Kotlin"]

CODE_TASKS = [
    "reverses a string", "checks whether a number is prime", "counts how often each word appears in a text",
    "merges two sorted lists into one sorted list", "removes duplicates from a list while keeping the order",
    "checks whether a string is a palindrome", "flattens a nested list", "returns the n-th Fibonacci number",
    "converts Celsius to Fahrenheit", "finds the longest common prefix of a list of strings",
    "computes the factorial of a number", "sorts a list of dictionaries by a given key",
    "checks whether two strings are anagrams", "finds the largest and smallest number in a list",
    "computes the greatest common divisor of two integers", "converts a decimal number to binary",
    "validates that a string looks like an email address", "splits a list into chunks of size n",
    "returns the second largest element of a list", "counts the vowels in a sentence",
    "implements binary search on a sorted list", "capitalises the first letter of every word",
    "rotates a list by k positions", "transposes a matrix", "generates all permutations of a string",
    "checks whether brackets in a string are balanced", "computes the running average of a stream of numbers",
    "parses a date string like 2024-03-15 and prints the weekday", "reads a text file and prints its longest line",
    "implements a simple stack with push, pop and peek", "implements a queue using two stacks",
    "finds all pairs in a list that add up to a target sum", "computes the median of a list of numbers",
    "converts a Roman numeral to an integer", "compresses a string like aaabcc into a3b1c2",
    "returns the intersection of two lists", "checks whether a year is a leap year",
    "shuffles a list without using a library shuffle", "implements FizzBuzz from 1 to 100",
    "counts the lines, words and characters of a file", "finds the most common element in a list",
    "converts a string to snake_case", "implements a least-recently-used cache",
    "computes the dot product of two vectors", "generates a random password of a given length",
    "removes all whitespace from a string", "checks whether a linked list has a cycle",
    "computes the sum of the digits of a number", "groups words by their first letter",
    "finds the missing number in a list containing 1 to n",
]

SQL_TASKS = [
    "finds the ten customers who spent the most in 2023", "counts the orders per month",
    "lists employees who earn more than their manager", "finds duplicate email addresses in a users table",
    "returns the average salary per department", "deletes rows older than 30 days from a logs table",
    "finds products that have never been ordered", "returns the second highest salary",
    "joins an orders table with a customers table and shows the customer name for each order",
    "counts how many users signed up each day last week",
]

SHELL_TASKS = [
    "find all files larger than 100 MB in my home directory", "count the lines in every .py file in a folder",
    "rename all .jpeg files in a folder to .jpg", "show which process is using port 8080",
    "delete all empty directories under the current folder", "see the last 50 lines of a log file as it grows",
    "compress a folder into a .tar.gz archive", "search for a word in all text files recursively",
    "show disk usage of each subfolder sorted by size", "run a command every five minutes",
]

CODE_CONCEPTS = [
    "the difference between a list and a tuple in Python", "what a closure is", "how garbage collection works",
    "the difference between == and === in JavaScript", "what a race condition is", "what Big-O notation means",
    "the difference between a process and a thread", "what dependency injection is", "how a hash map works",
    "what REST means", "the difference between SQL and NoSQL databases", "what unit tests are for",
    "what a pointer is in C", "why global variables are discouraged", "what async/await does",
    "the difference between git merge and git rebase", "what a memory leak is", "what immutability means",
    "how recursion uses the call stack", "what a regular expression is", "what an interface is in Java",
    "the difference between compiled and interpreted languages", "what a deadlock is", "what caching is",
    "what the Rust borrow checker does", "what JSON is", "what a virtual environment is in Python",
    "how HTTPS keeps data safe", "what a Docker container is", "what continuous integration is",
]

CODE_SNIPPETS = [
    ("Python", "def f(xs):\n    return [x for x in xs if x % 2 == 0]"),
    ("Python", "total = 0\nfor i in range(1, 11):\n    total += i * i\nprint(total)"),
    ("Python", "def mean(xs):\n    return sum(xs) / len(xs)\n\nprint(mean([]))"),
    ("Python", "d = {}\nfor w in text.split():\n    d[w] = d.get(w, 0) + 1"),
    ("Python", "def add_item(item, items=[]):\n    items.append(item)\n    return items"),
    ("Python", "nums = [3, 1, 2]\nsorted_nums = nums.sort()\nprint(sorted_nums)"),
    ("Python", "with open('data.txt') as f:\n    lines = [l.strip() for l in f if l.strip()]"),
    ("Python", "for i in range(len(items)):\n    if items[i] == target:\n        return i\nreturn -1"),
    ("JavaScript", "const doubled = [1, 2, 3].map(x => x * 2);\nconsole.log(doubled);"),
    ("JavaScript", "for (var i = 0; i < 3; i++) {\n  setTimeout(() => console.log(i), 100);\n}"),
    ("JavaScript", "function sum(a, b) {\n  return a + b;\n}\nconsole.log(sum('2', 3));"),
    ("JavaScript", "const user = await fetch('/api/user').then(r => r.json());"),
    ("C", "int main() {\n  int a[5];\n  for (int i = 0; i <= 5; i++) a[i] = i;\n  return 0;\n}"),
    ("C", "char *s = malloc(10);\nstrcpy(s, \"hello world\");"),
    ("SQL", "SELECT name, COUNT(*) FROM orders GROUP BY name HAVING COUNT(*) > 5;"),
    ("SQL", "SELECT * FROM users WHERE email = NULL;"),
    ("Bash", "for f in *.txt; do\n  wc -l \"$f\"\ndone"),
    ("Bash", "grep -rn \"TODO\" . | wc -l"),
    ("Java", "String a = \"hi\";\nString b = new String(\"hi\");\nSystem.out.println(a == b);"),
    ("Rust", "let v = vec![1, 2, 3];\nlet w = v;\nprintln!(\"{:?}\", v);"),
    ("Python", "import re\nprint(re.findall(r\"\\d+\", \"a1b22c333\"))"),
    ("Python", "x = [[0] * 3] * 3\nx[0][0] = 1\nprint(x)"),
]

REGEXES = [r"^\d{3}-\d{4}$", r"[A-Z][a-z]+", r"^\s*$", r"\b\w+@\w+\.com\b", r"(\d+)\.(\d+)", r"^#[0-9a-fA-F]{6}$",
           r"colou?r", r"\bthe\b"]

TRIVIA = [
    "What is the capital of Australia?", "Who wrote Pride and Prejudice?", "How many bones are in the adult human body?",
    "What is the largest planet in our solar system?", "Who painted the ceiling of the Sistine Chapel?",
    "What is the chemical symbol for gold?", "In which year did the Titanic sink?", "What is the longest river in Africa?",
    "Who developed the theory of general relativity?", "What is the hardest natural substance?",
    "How many continents are there?", "What language has the most native speakers?", "Who invented the telephone?",
    "What is the smallest prime number?", "Which planet is known as the Red Planet?", "What is the boiling point of water at sea level in Fahrenheit?",
    "Who was the first person to walk on the Moon?", "What is the tallest mountain in the world?",
    "Which ocean is the largest?", "What gas do plants absorb from the air?", "Who composed the Four Seasons?",
    "What is the currency of Japan?", "How many players are on a football (soccer) team on the field?",
    "What is the main ingredient in guacamole?", "Which country has the most islands?", "Who wrote One Hundred Years of Solitude?",
    "What does DNA stand for?", "What is the freezing point of water in Celsius?", "Which element has the atomic number 1?",
    "Who discovered penicillin?", "What is the capital of Canada?", "How many strings does a standard guitar have?",
    "What is the largest desert in the world?", "Which animal is the fastest on land?", "What is the square root of 144?",
    "Who was Cleopatra?", "What is the Great Barrier Reef?", "Which city hosted the 2012 Summer Olympics?",
    "What is the speed of sound in air, roughly?", "Who wrote the Odyssey?", "What is the most spoken language in South America?",
    "How long does light from the Sun take to reach Earth?", "What is the largest organ of the human body?",
    "Who was Ada Lovelace?", "What is the capital of Kenya?", "What instrument has 88 keys?",
    "Which blood type is the universal donor?", "What is the deepest point in the ocean?", "Who painted The Starry Night?",
    "What year did World War II end?", "How many sides does a hexagon have?", "What is the national animal of Scotland?",
    "Which country gifted the Statue of Liberty to the United States?", "What is the most abundant gas in Earth's atmosphere?",
    "Who was Nelson Mandela?", "What is the capital of Brazil?", "Which metal is liquid at room temperature?",
    "What is a light-year?", "Who wrote Don Quixote?", "How many hearts does an octopus have?",
    "What is the largest country by area?", "Which vitamin do we get from sunlight?", "What is the Rosetta Stone?",
    "Who invented the World Wide Web?", "What is the capital of Argentina?", "What are the three primary colours of light?",
    "What is the smallest country in the world?", "Who was Marie Curie?", "What is the oldest known written story?",
    "How many minutes are in a day?", "What is the main language spoken in Brazil?", "What is the tallest animal?",
    "Who built the first successful airplane?", "Which planet has the most moons?", "What is the capital of Egypt?",
    "What is photosynthesis short for, in plain words?", "What is the largest mammal?", "Who wrote Hamlet?",
    "What does a barometer measure?", "What is the capital of South Korea?", "Which country invented paper?",
    "What is the chemical formula of table salt?", "What is the Fibonacci sequence?", "Who was Genghis Khan?",
    "Why is the sky blue?", "Why do cats purr?", "Why do we have leap years?", "Why does ice float on water?",
    "Why do onions make you cry?", "Why do leaves change colour in autumn?", "Why is the ocean salty?",
    "Why do we yawn?", "Why does the Moon look bigger near the horizon?", "Why do planes leave white trails in the sky?",
    "Why is it colder at the top of a mountain?", "Why do stars twinkle?", "Why do we get goosebumps?",
    "How do bees make honey?", "How do birds know where to migrate?", "How does a compass work?",
    "How do noise-cancelling headphones work?", "How does a microwave oven heat food?", "How do fish breathe underwater?",
    "How does a refrigerator keep food cold?", "How do chameleons change colour?", "How are rainbows formed?",
]

HOWTO = [
    "change a flat tyre on a car", "boil an egg perfectly", "write a good CV", "start a vegetable garden",
    "tie a tie", "make a budget", "improve my handwriting", "learn to touch type", "clean a cast-iron pan",
    "prepare for a job interview", "fall asleep faster", "take better photos with my phone", "set up a home Wi-Fi network",
    "write a short story", "negotiate a higher salary", "make cold brew coffee", "unclog a sink without chemicals",
    "learn a new language as an adult", "build a habit of reading every day", "train a puppy to sit",
    "back up my computer", "give a good presentation", "remove a wine stain from a carpet", "meditate",
    "start running as a beginner", "write a thank-you note", "organise a messy closet", "keep houseplants alive",
    "make friends in a new city", "save for a holiday", "fix a squeaky door", "sharpen a kitchen knife",
    "choose a good watermelon", "memorise a speech", "study for an exam efficiently", "write a haiku",
    "make a paper airplane that flies far", "reduce my screen time", "plan a surprise party", "stop procrastinating",
    "clean my laptop keyboard", "set goals for the new year", "bake bread without a bread machine",
    "calm down before an exam", "write a professional email", "learn to juggle", "store fresh herbs",
    "make my own compost", "change a car's engine oil", "be a better listener", "start journaling",
    "ask for feedback at work", "pack a suitcase efficiently", "get rid of fruit flies", "learn chess",
    "create a strong password", "speed up an old laptop", "write a cover letter", "keep a conversation going",
    "make a good first impression", "teach a child to ride a bike", "read a nutrition label",
    "fold a fitted sheet", "make a simple website", "care for a sourdough starter", "plan a road trip",
    "paint a room", "deal with a difficult coworker", "get better at drawing", "write a eulogy",
]

ADVICE = [
    "I have two job offers, one pays more and the other has a better team", "my roommate never cleans up",
    "I keep waking up at 3 a.m. and can't get back to sleep", "I want to switch careers into programming at 35",
    "my friend keeps cancelling plans at the last minute", "I'm nervous about giving a speech at my sister's wedding",
    "I spend too much money on takeaway food", "my manager gives me more work than I can finish",
    "I want to get fit but I only have 20 minutes a day", "I forget most of what I read",
    "my teenage son won't talk to me about school", "I feel lonely since moving to a new city",
    "I have a big exam in two weeks and haven't started studying", "my neighbour plays loud music at night",
    "I can't decide whether to buy or rent a home", "I get distracted by my phone while working",
    "I want to ask for a raise but I'm afraid", "my team missed a deadline and I'm the project lead",
    "I want to learn to cook but I don't know where to start", "I get anxious in large groups",
    "my old laptop is very slow and I can't afford a new one", "I have a job interview tomorrow",
    "my houseplants keep dying", "I want to start saving for retirement in my twenties",
    "I have too many unread emails", "my coworker takes credit for my ideas", "I want to read more books this year",
    "I disagree with my best friend about politics", "my dog barks whenever someone passes the house",
    "I need to tell my boss I made a mistake", "I feel stuck in my career", "I want to travel alone for the first time",
    "I'm moving abroad and don't speak the language", "I procrastinate on everything important",
    "my parents want me to study medicine but I love art", "I have to choose between two universities",
    "I want to write a novel but never finish anything", "my sleep schedule is a mess after night shifts",
    "I'm starting my first job as a manager next week", "I can't stop comparing myself to others online",
]

PAIRS = [
    ("cats", "dogs as pets"), ("renting", "buying a home"), ("Python", "JavaScript for a first language"),
    ("electric cars", "petrol cars"), ("tea", "coffee"), ("reading books", "listening to audiobooks"),
    ("working from home", "working in an office"), ("a Roth IRA", "a traditional IRA"), ("running", "swimming"),
    ("iOS", "Android"), ("TCP", "UDP"), ("weather", "climate"), ("a virus", "a bacterium"),
    ("stocks", "bonds"), ("baking soda", "baking powder"), ("an alligator", "a crocodile"),
    ("socialism", "capitalism"), ("Mars", "Venus"), ("classical", "operant conditioning"),
    ("speed", "velocity"), ("mitosis", "meiosis"), ("a hurricane", "a tornado"), ("SSD", "hard disk drives"),
    ("a lake", "a pond"), ("empathy", "sympathy"), ("affect", "effect"), ("RAM", "storage"),
    ("public schools", "private schools"), ("trains", "planes for travel in Europe"), ("butter", "margarine"),
    ("LED", "incandescent bulbs"), ("a credit card", "a debit card"), ("yoga", "pilates"),
    ("the Greek", "the Roman gods"), ("Impressionism", "Expressionism"), ("nuclear", "solar power"),
    ("a simile", "a metaphor"), ("machine learning", "traditional programming"), ("a democracy", "a republic"),
    ("introverts", "extroverts"), ("frogs", "toads"), ("weightlifting", "cardio"), ("e-books", "paper books"),
    ("a fixed", "a variable mortgage rate"), ("Git", "SVN"), ("left-brain", "right-brain myths and facts"),
    ("rain forests", "temperate forests"), ("monarchy", "dictatorship"), ("a startup", "a large company job"),
    ("spring", "autumn for visiting Japan"), ("arrays", "linked lists"), ("vinyl records", "streaming music"),
]

LIST_THINGS = [
    "ways to save money on groceries", "tips for better sleep", "famous Renaissance painters", "healthy breakfast ideas",
    "things to do on a rainy day", "books every teenager should read", "reasons to learn a second language",
    "common mistakes new programmers make", "indoor plants that are hard to kill", "ways to reduce plastic waste",
    "questions to ask at the end of a job interview", "fun facts about octopuses", "classic films from the 1950s",
    "board games for a family night", "ways to be more productive in the morning", "signs of burnout",
    "skills every adult should have", "cheap hobbies to start", "countries with the best food",
    "inventions that changed the world", "exercises you can do without equipment", "ways to make new friends",
    "European cities worth visiting", "tips for a long flight", "foods high in protein", "uses of baking soda",
    "famous female scientists", "things to check before buying a used car", "ways to cool a room without AC",
    "good habits for students", "rules of good email etiquette", "ideas for a first date",
    "ancient wonders of the world", "programming languages and what they are used for", "ways to reduce stress",
    "herbs that are easy to grow", "things to pack for a camping trip", "tips for public speaking",
    "myths about the brain", "vegetables that grow in shade", "ways to improve a small living room",
    "important events of the 20th century", "apps for learning languages", "ways to stay warm in winter",
    "snacks for a road trip", "reasons the Roman Empire fell", "features of a good password",
    "creative writing prompts", "jobs that did not exist twenty years ago", "ways to keep kids busy at home",
    "traditional dishes from Mexico", "benefits of walking every day", "tips for taking notes in class",
    "careers in renewable energy", "animals that live in the Arctic", "ways to show appreciation to coworkers",
]

BRAINSTORM = [
    "names for a coffee shop run by cats", "themes for a seven-year-old's birthday party", "blog post ideas about gardening",
    "gift ideas for a dad who likes fishing", "names for a fantasy kingdom", "ways to celebrate a team's success",
    "slogans for a bike repair shop", "titles for a mystery novel set on a train", "weekend project ideas with a Raspberry Pi",
    "fundraising ideas for a school library", "names for a podcast about history", "costume ideas for a party",
    "ideas for a science fair project", "ways to make a small wedding feel special", "themes for a photography series",
    "names for a pet hamster", "app ideas that help people save water", "activities for a team-building day",
    "ideas for a short film with no dialogue", "ways to use leftover rice", "names for a bakery",
    "plot twists for a detective story", "ways to decorate a classroom", "YouTube channel ideas about cooking",
    "ideas for a community event in a small town", "names for a robot in a children's book",
    "ways to make exercise fun for kids", "hashtags for a travel photo", "questions for an icebreaker game",
    "side hustle ideas for a student", "ways to reuse glass jars", "names for a band that plays folk music",
    "topics for a debate club", "ideas for a cosy reading corner", "gift ideas under ten dollars",
    "mascots for a software company", "ideas for a garden for butterflies", "ways to practise gratitude",
]

WRITING_FORMS = [
    ("a short poem", True), ("a haiku", True), ("a limerick", True), ("a very short story", True),
    ("a two-paragraph story", True), ("a song chorus", True), ("a diary entry", True), ("a fairy tale opening", True),
    ("a dialogue between two friends", True), ("a motivational speech opening", True), ("a riddle", True),
    ("a news headline and a first paragraph", True), ("a children's bedtime story", True), ("a sonnet", True),
    ("a movie plot summary", True), ("a six-word story", True), ("an acrostic poem", False), ("a free-verse poem", True),
]

WRITING_SUBJECTS = [
    "a rainy morning in the city", "a lost cat finding its way home", "the first day at a new job", "the ocean at night",
    "a robot learning to paint", "an old lighthouse keeper", "friendship", "autumn leaves", "a dragon who is afraid of fire",
    "the smell of fresh bread", "moving to a new country", "a lighthouse in a storm", "a city without cars",
    "a grandmother's garden", "the last day of summer", "a time traveller stuck in the wrong century", "coffee",
    "a snowy forest", "an astronaut looking at Earth", "a forgotten library", "a lazy Sunday", "the first snow of winter",
    "a small bakery in Paris", "a detective who is also a chef", "a busy train station", "the Moon", "a kite",
    "a stray dog in a market", "learning to ride a bicycle", "a thunderstorm", "the sound of rain on a roof",
    "an unexpected letter", "a mountain village", "a library cat", "a kid's first science experiment",
    "a friendship between a tree and a bird", "a street musician", "the end of a long journey", "hope", "silence",
    "a haunted house that is actually friendly", "a garden on a spaceship", "a penguin who wants to fly",
    "a message in a bottle", "the night before an exam", "a family dinner", "a museum after closing time",
]

ACROSTIC_WORDS = ["SPRING", "OCEAN", "HOPE", "MUSIC", "CODE", "FRIEND", "SUMMER", "DREAM", "LIGHT", "BREAD"]

EMAIL_RECIPIENTS = ["my landlord", "my manager", "a customer", "my child's teacher", "a colleague", "a hotel",
                    "my neighbour", "a university admissions office", "a client", "my team"]
EMAIL_PURPOSES = [
    "asking to fix a broken heater", "asking for a day off next Friday", "apologising for a late delivery",
    "asking about my child's progress", "thanking them for their help on a project", "asking to change a booking",
    "inviting them to a small garden party", "asking about application deadlines", "following up on an unpaid invoice",
    "announcing a new meeting schedule", "declining an invitation politely", "asking for feedback on a report",
    "introducing myself as the new project lead", "requesting a refund", "reminding them about a deadline",
]

WRITING_EXTRAS = ["Write a product description for {x}.", "Write a tweet announcing {x}.", "Write a short speech for {x}.",
                  "Write a catchy slogan for {x}.", "Write a short advertisement for {x}."]
PRODUCTS = ["a reusable water bottle", "noise-cancelling headphones", "a solar-powered phone charger",
            "a standing desk", "an app that reminds you to drink water", "handmade soap", "a smart umbrella",
            "a bakery's new cinnamon roll", "a language-learning course", "a community garden opening",
            "a bicycle repair café", "a local library's summer reading challenge", "a new hiking trail",
            "a charity run", "a board game café", "a retirement party for a colleague", "a school graduation"]

SENTENCES = [
    "me and him goes to the store yesterday and buyed some apple.", "The meeting have been moved to next tuesday.",
    "Their going to announce the results tomorrow, weather we like it or not.",
    "I wanted to inform you that the report which you asked for is now done and finished.",
    "In my opinion I think that we should maybe consider possibly changing the plan.",
    "The cat sat on the mat because it was tired.", "We regret to inform you that your application was unsuccessful.",
    "hey can u send me the file asap thx", "The company's profits increased significantly last year.",
    "It is important to drink water every day.", "The book was written by my favourite author in 1998.",
    "Due to the fact that it was raining, the game was cancelled.", "She don't like vegetables, but she eat them anyway.",
    "The results of the experiment was surprising to everyone.", "Please find attached the document for your review.",
    "I has been working here since three years.", "The new policy will affect all employees starting next month.",
    "Our team is excited to announce the launch of our new app.", "The weather is nice today so lets go to the park.",
    "He said that he will call me back but he never did.", "Learning to code can open many doors.",
    "The quick brown fox jumps over the lazy dog.", "Everyone should bring their own lunch to the picnic.",
    "This product is the best thing I have ever bought in my whole life.", "Less people came to the event then we expected.",
    "The museum, which was built in 1890, attracts thousands of visitors.", "Can you tell me where is the station?",
    "Its a great opportunity for everyone involved.", "The children was playing in the garden when it started to rain.",
    "Thank you for your patience while we fix the problem.", "I could of finished the work if I had more time.",
    "Our prices are competitive and our service is excellent.", "The train was delayed because of a signal failure.",
    "Studying late at night makes it hard to wake up early.", "We will discuss this matter in the next meeting.",
    "Honestly the movie was kind of boring but the music was good.", "Between you and I, the plan won't work.",
    "The scientist conducted an experiment to test her hypothesis.", "Alot of people thinks that the test was unfair.",
    "The store will be closed on Monday for maintenance.",
]

REWRITE_OPS = [
    "Rewrite this sentence to sound more formal:", "Rewrite this sentence to sound more casual:",
    "Fix the grammar and spelling in this sentence:", "Make this sentence shorter:", "Paraphrase this sentence:",
    "Turn this sentence into a question:", "Rewrite this in the passive voice:", "Rewrite this in the active voice:",
    "Make this sentence more polite:", "Rewrite this sentence for a children's book:", "Translate this into French:",
    "Translate this into Spanish:", "Translate this into German:", "Make this sound more enthusiastic:",
    "Rewrite this sentence without using the letter e, if you can:", "Correct any mistakes here:",
]

PASSAGES = [
    "Honeybees communicate the location of flowers through a 'waggle dance'. The angle of the dance relative to the "
    "sun shows the direction, and the length of the waggle shows the distance. Other bees watch the dance and then fly "
    "straight to the food source.",
    "The city council voted on Tuesday to turn the old railway line into a cycling and walking path. Supporters say "
    "the path will reduce traffic and give residents a safe place to exercise. Some shop owners worry that fewer cars "
    "will mean fewer customers. Construction is expected to start next spring.",
    "Sleep is not a passive state. During deep sleep the brain replays the day's experiences and strengthens "
    "important memories, while during REM sleep it seems to connect new information with older knowledge. People who "
    "sleep well after learning something usually remember it better the next day.",
    "In 1928 Alexander Fleming noticed that mould had contaminated one of his bacterial cultures and that the bacteria "
    "around the mould had died. The mould produced a substance he called penicillin. It took more than a decade "
    "before other scientists found a way to produce it in large amounts.",
    "Our quarterly results show revenue up 12 percent compared with last year, mainly thanks to strong online sales. "
    "Costs also rose, however, because of higher shipping prices. The board expects growth to slow in the next quarter "
    "and has postponed the planned opening of two new stores.",
    "Remote work gives employees more flexibility and saves them time on commuting. On the other hand, many people "
    "report feeling isolated, and managers find it harder to build team spirit. Many companies now choose a hybrid model, "
    "with two or three office days a week.",
    "The Great Wall of China is not a single wall but a collection of walls built over many centuries by different "
    "dynasties. Its total length, including all branches, is estimated at over 20,000 kilometres. Contrary to a popular "
    "myth, it cannot be seen with the naked eye from space.",
    "To make a simple tomato sauce, warm olive oil in a pan, add chopped garlic and cook it for a minute without letting "
    "it brown. Add a tin of chopped tomatoes, a pinch of salt and a little sugar, and simmer for twenty minutes. Finish "
    "with fresh basil.",
    "Octopuses have three hearts and blue blood. Two hearts pump blood through the gills, and the third pumps it through "
    "the rest of the body. Their arms contain a large share of their neurons, which lets each arm react to touch and "
    "taste on its own.",
    "The library will extend its opening hours during the exam period. From the first of June, it will be open from 7 "
    "a.m. until midnight on weekdays. Students must show their ID card after 8 p.m. Group study rooms can be booked "
    "online up to three days in advance.",
    "Dear team, thank you all for your hard work on the product launch. Despite the tight deadline and a few technical "
    "problems, we delivered on time and the early customer feedback is very positive. Please join us on Friday afternoon "
    "for a small celebration in the main hall.",
    "Compound interest means that you earn interest not only on the money you invested but also on the interest it has "
    "already earned. Over long periods this effect becomes very large. This is why starting to save early often matters "
    "more than the amount you save.",
    "The Amazon rainforest produces a large share of the world's oxygen from its plants, but it also consumes most of it "
    "again through the breathing of animals and the decay of plant matter. Its real importance lies in storing carbon and "
    "in its enormous biodiversity.",
    "Many people believe that goldfish have a memory of only three seconds. In fact, experiments have shown that goldfish "
    "can remember things for months. They can be trained to respond to sounds, colours and even to push levers for food.",
    "The new phone has an excellent camera and a bright screen, but the battery barely lasts a full day and the charger "
    "is sold separately. At this price, buyers may want to compare it with last year's model, which offers similar "
    "features for less money.",
    "Volcanoes form where magma from deep inside the Earth rises to the surface. Most of them are found along the edges "
    "of tectonic plates, such as around the Pacific Ocean in an area known as the Ring of Fire. Some, like those in "
    "Hawaii, form above hot spots in the middle of a plate.",
    "Starting next month, all employees must use the new expense system. Paper receipts will no longer be accepted. "
    "Please photograph every receipt and upload it within seven days of the purchase. Training sessions will be held "
    "every Wednesday at 10 a.m.",
    "The printing press, developed by Johannes Gutenberg around 1440, made books much cheaper and faster to produce. "
    "Ideas spread more quickly across Europe, literacy rates rose, and the press played a major role in the Reformation "
    "and the Scientific Revolution.",
    "Regular walking has surprising benefits. It strengthens the heart, helps control weight, improves mood and may even "
    "boost creativity. Experts suggest at least thirty minutes a day, which can be split into shorter walks.",
    "The hotel was clean and the staff were friendly, but our room faced a busy street and it was hard to sleep. "
    "Breakfast was excellent, with fresh bread and local cheese. We would stay again, but we would ask for a room at the back.",
    "Machine learning models learn patterns from examples instead of following rules written by a programmer. A model "
    "trained on thousands of labelled photos of cats and dogs, for example, can learn to tell them apart in new photos. "
    "The quality of the data matters as much as the model itself.",
    "Tea was first drunk in China, possibly as a medicine, thousands of years ago. It reached Europe in the seventeenth "
    "century and quickly became fashionable in Britain. Today it is the most consumed drink in the world after water.",
    "After three years of decline, the number of visitors to the national park rose sharply this summer. Park rangers "
    "credit the new shuttle bus service and the reopened mountain trail. They also warn that more visitors mean more "
    "litter and ask everyone to take their rubbish home.",
    "Ants live in highly organised colonies. Worker ants collect food, care for the young and defend the nest, while the "
    "queen lays eggs. They communicate mainly through chemical signals called pheromones, which they use to mark trails "
    "to food.",
    "The train company apologises for the cancellations this week. A fault in the signalling system caused delays across "
    "the network. Engineers have replaced the faulty equipment, and a full timetable will run from Monday. Passengers "
    "whose trains were cancelled can claim a refund online.",
    "Learning a musical instrument as an adult is harder than as a child, but far from impossible. Adults often progress "
    "quickly at first because they understand theory and can practise with discipline. The key is short, regular "
    "practice sessions rather than long, occasional ones.",
]

PASSAGE_OPS = [
    "Summarise this in one sentence:", "Summarise the following text in three bullet points:", "Give this text a title:",
    "What is the main point of this text?", "Write three questions a teacher could ask about this text:",
    "List the key facts in this text:", "Explain this text to a child:", "What is the tone of this text?",
    "Write a short reply to this:", "Turn this text into a tweet:", "Which words in this text might be hard for a learner? Explain them.",
    "Rewrite this text in simpler English:", "TL;DR:", "Pull out any numbers or dates from this text and say what they refer to:",
]

REVIEWS = [
    "The pasta was cold and the waiter ignored us for twenty minutes.", "Absolutely loved this book, I couldn't put it down!",
    "It works, I guess. Nothing special for the price.", "Best headphones I've owned. The sound is crystal clear.",
    "The hotel looked nothing like the photos. Never again.", "Delivery was fast, but the box was damaged.",
    "The film started slowly, but the ending was worth it.", "Terrible customer service. I waited an hour on the phone.",
    "Great value for money, and my kids love it.", "The app crashes every time I try to upload a photo.",
    "A cosy little café with the best croissants in town.", "The instructions were confusing, but once assembled the desk is solid.",
    "I expected more from such a famous restaurant.", "This blender is loud but it makes perfect smoothies.",
    "Five stars. The course explained everything clearly.", "The shoes fell apart after two weeks.",
    "Not bad, not great. The battery life is average.", "The concert was magical from start to finish.",
    "Overpriced and underwhelming.", "Friendly staff, clean rooms, and a great view of the sea.",
    "The plot made no sense and the acting was wooden.", "I returned it the next day.",
    "It does exactly what it says. Happy with the purchase.", "The coffee was fine but the music was far too loud.",
    "My package arrived a week late and nobody answered my emails.", "Surprisingly good for a budget phone.",
    "The museum tour guide was funny and knowledgeable.", "Meh.", "The update ruined an app I used to love.",
    "Would recommend to anyone learning to cook.",
]

HEADLINES = [
    "Local team wins championship after dramatic final", "Central bank raises interest rates again",
    "New species of frog discovered in the Andes", "Tech giant unveils foldable laptop", "Heatwave expected to last all week",
    "Study links daily walks to better memory", "City opens its first fully electric bus line", "Author wins prize for debut novel",
    "Scientists detect water vapour on distant planet", "Stock markets fall as oil prices rise", "School introduces four-day week trial",
    "Hospital opens new children's wing", "Film festival announces opening movie", "Chess prodigy, 12, beats grandmaster",
    "Flooding closes main road into town", "Startup raises millions for battery recycling",
]
HEADLINE_LABELS = "sports, business, science, technology, weather, health, culture, politics or local news"

STATEMENTS = [
    "Water boils at 100 degrees Celsius at sea level.", "Pizza is the best food in the world.", "Paris is the capital of France.",
    "Summer is better than winter.", "The Earth orbits the Sun.", "Cats are smarter than dogs.", "There are seven days in a week.",
    "Jazz is boring.", "Mount Everest is the highest mountain above sea level.", "Everyone should learn to code.",
    "Humans need oxygen to live.", "Football is more exciting than basketball.", "The Pacific is the largest ocean.",
    "Reading on paper is nicer than reading on a screen.", "Light travels faster than sound.", "Mondays are the worst day of the week.",
]

ODD_ONE_OUT = [
    "apple, banana, carrot, cherry", "Mercury, Venus, Moon, Mars", "piano, violin, trumpet, hammer", "red, blue, green, square",
    "Python, Java, Cobra, Rust", "oak, pine, rose, maple", "eagle, penguin, sparrow, bat", "Paris, London, Africa, Tokyo",
    "2, 3, 5, 9, 11", "copper, iron, plastic, silver", "sonnet, haiku, novel, limerick", "happy, joyful, sad, cheerful",
]

SPAM_MESSAGES = [
    "Congratulations! You have won a $1000 gift card. Click here to claim it now!",
    "Hi Sam, are we still meeting for lunch on Thursday?", "Your account has been suspended. Verify your password at this link.",
    "Reminder: the team meeting starts at 10 tomorrow in room 3.", "Earn money from home!!! No experience needed, limited spots!",
    "Your parcel could not be delivered. Pay a small fee to reschedule.", "Thanks for your order. Your invoice is attached.",
    "Mum, I lost my phone, this is my new number, can you send me money?",
]

WORDS = ["serendipity", "ephemeral", "ubiquitous", "resilient", "meticulous", "pragmatic", "ambiguous", "candid",
         "eloquent", "frugal", "gregarious", "hubris", "inevitable", "lethargic", "nostalgia", "obsolete", "paradox",
         "quintessential", "redundant", "scrutinise", "tenacious", "verbose", "whimsical", "zealous", "benevolent",
         "cacophony", "diligent", "empathy", "fickle", "gullible", "hypothesis", "irony", "juxtapose", "mundane",
         "nuance", "optimistic", "procrastinate", "quaint", "reluctant", "sceptical", "trivial", "vivid", "wanderlust"]
WORD_OPS = ["What does the word '{w}' mean?", "Give me three synonyms for '{w}'.", "Use the word '{w}' in a sentence.",
            "What is the opposite of '{w}'?", "Where does the word '{w}' come from?", "Give me words that rhyme with '{w}'.",
            "Is '{w}' a formal or an informal word? Give an example.", "How do you pronounce '{w}'?"]

PROS_CONS = ["working from home", "electric cars", "social media for teenagers", "nuclear energy", "online school",
             "living in a big city", "a gap year before university", "homeschooling", "owning a car in a city",
             "intermittent fasting", "open-plan offices", "self-checkout machines", "freelancing", "a four-day work week",
             "learning two languages at once", "buying a house with friends", "smart speakers", "daylight saving time",
             "e-scooters", "standing desks", "school uniforms", "tiny houses", "video games for children",
             "renting furniture", "cashless payments", "remote doctor visits", "adopting an older dog", "zoos"]

CITIES = ["Lisbon", "Kyoto", "Rome", "New York", "Mexico City", "Edinburgh", "Istanbul", "Vienna", "Barcelona", "Seoul",
          "Cape Town", "Buenos Aires", "Prague", "Marrakech", "Vancouver", "Hanoi", "Copenhagen", "Sydney"]
PLANS = [
    "Plan a {n}-day trip to {city} on a small budget.", "What should I see in {city} if I only have {n} days?",
    "Make a {n}-day itinerary for {city} with kids.", "I'm visiting {city} for {n} days in winter. Any tips?",
]
ROUTINES = ["Make a weekly meal plan for a {diet}.", "Create a {n}-week study plan for {exam}.",
            "Design a {n}-day workout routine for {goal}.", "Write a morning routine for {who}."]
DIETS = ["vegetarian family of four", "student on a tight budget", "runner training for a marathon", "someone who hates cooking",
         "vegan beginner", "person trying to eat less sugar"]
EXAMS = ["a driving theory test", "a chemistry final", "the SAT", "a job certification in project management",
         "a history exam about the twentieth century", "a beginner Japanese test"]
GOALS = ["building strength at home", "getting ready for a 5 km run", "improving flexibility", "a beginner with back pain",
         "staying active while working at a desk"]
WHO = ["a busy parent", "a night-shift nurse", "a student who wants to be more productive", "someone working from home",
       "a retired person who wants to stay active"]

DISHES = ["pancakes", "a simple curry", "guacamole", "French onion soup", "risotto", "banana bread", "hummus",
          "fried rice", "a Greek salad", "shakshuka", "lemonade", "chocolate chip cookies", "a vegetable stir-fry",
          "mashed potatoes", "tomato soup", "an omelette", "pad thai", "apple crumble", "pesto", "chili con carne"]
INGREDIENTS = ["eggs, spinach and cheese", "rice, beans and an onion", "chicken, lemon and garlic", "pasta, tinned tomatoes and tuna",
               "potatoes, leeks and cream", "oats, bananas and peanut butter", "tofu, broccoli and soy sauce",
               "lentils, carrots and cumin", "bread, tomatoes and basil", "chickpeas, yoghurt and cucumber"]

FUN = ["Tell me a joke about {x}.", "Tell me a fun fact about {x}.", "Write a riddle whose answer is {x}.",
       "If {x} could talk, what would it say?", "Describe {x} without using the word itself.",
       "Invent a superhero whose power is related to {x}."]
FUN_THINGS = ["penguins", "coffee", "the Moon", "computers", "cheese", "time", "socks", "clouds", "pianos", "volcanoes",
              "mathematicians", "a toaster", "umbrellas", "trains", "dinosaurs", "the alphabet", "bicycles", "a cactus"]

SYSTEM_PROMPTS = [
    "You are a helpful assistant.", "You are a concise assistant. Keep answers short.", "You are a patient tutor for school students.",
    "You are a friendly cooking assistant.", "You are an expert software engineer who explains code clearly.",
    "You are a helpful assistant that answers in plain, simple English.", "You are a careful assistant. If you are unsure, say so.",
    "You are a cheerful travel guide.", "You are a writing coach.", "You are a knowledgeable science teacher.",
]

FOLLOW_UPS: dict[str, list[str]] = {
    "explain": ["Can you give me a concrete example?", "Explain it again as if I were ten.", "What is a common misconception about it?",
                "How is this used in everyday life?", "Summarise that in one sentence.", "Why does that matter?",
                "What should I learn next about this?", "Can you make that shorter?"],
    "write": ["Make it shorter.", "Now make it funnier.", "Give it a title.", "Rewrite it in a more formal tone.",
              "Can you write a version with a sad ending?", "Make it rhyme.", "Now write it from another point of view."],
    "email": ["Make it more polite.", "Make it shorter.", "Add a subject line.", "Make it sound less formal."],
    "code": ["Add comments to the code.", "How would I test this?", "What is the time complexity?", "Can you make it shorter?",
             "What happens if the input is empty?", "Now do the same in JavaScript.", "Explain how it works line by line."],
    "math": ["Can you check the answer another way?", "Explain the steps more slowly.", "What if the numbers were doubled?",
             "Where would I use this in real life?"],
    "list": ["Sort them from most to least important.", "Give one sentence on each.", "Which one would you pick and why?",
             "Add three more.", "Put that in a table."],
    "advice": ["What if that doesn't work?", "What is the first small step I can take today?", "Thanks. Any mistakes to avoid?",
               "How long until I see results?"],
    "howto": ["What tools or materials do I need?", "What is the most common mistake?", "Can you make it a checklist?",
              "How long does it take?"],
    "compare": ["Which would you recommend for a beginner?", "Can you put that in a table?", "What do they have in common?"],
    "text": ["Now make it even shorter.", "Can you explain your answer?", "What else could you say about the text?"],
    "plan": ["Can you make it cheaper?", "Add a rainy-day option.", "What should I book in advance?"],
    "cook": ["Can I make it vegan?", "How long does it keep in the fridge?", "What can I serve with it?"],
    "general": ["Thanks! Can you put that in a table?", "Can you say that in fewer words?", "Why?", "Interesting. Tell me more.",
                "Can you give an example?"],
}

# --------------------------------------------------------------------------------------------------------
# Tasks: each returns (prompt text, subject, follow-up kind, whether style suffixes read naturally)
# --------------------------------------------------------------------------------------------------------

Task = tuple[str, str, str, bool]


def _topic(rng: random.Random) -> str:
    return rng.choice(TOPICS[rng.choice(sorted(TOPICS))])


def _explain(rng: random.Random) -> Task:
    t, a = _topic(rng), rng.choice(AUDIENCES)
    text = rng.choice([
        f"Explain {t} to {a}.", f"What is {t}?", f"How does {t} work?", f"Can you give me a simple explanation of {t}?",
        f"I never really understood {t}. Could you break it down for me?", f"Why is {t} important?",
        f"Give me a short overview of {t}.", f"What are the key ideas behind {t}?", f"Teach me the basics of {t}.",
        f"Explain {t} in three sentences.", f"What would {a} need to know about {t}?", f"Describe {t} using an analogy.",
        f"What are the most common misunderstandings about {t}?", f"Write a short lesson about {t} for {a}.",
    ])
    return text, t, "explain", True


def _write(rng: random.Random) -> Task:
    form, subject_ok = rng.choice(WRITING_FORMS)
    if form == "an acrostic poem":
        word = rng.choice(ACROSTIC_WORDS)
        return f"Write an acrostic poem for the word {word}.", word, "write", False
    s = rng.choice(WRITING_SUBJECTS)
    text = rng.choice([f"Write {form} about {s}.", f"Could you write {form} about {s}?", f"I need {form} about {s}.",
                       f"Compose {form} inspired by {s}.", f"Write {form} about {s} for a child."])
    return text, s, "write", False


def _email(rng: random.Random) -> Task:
    r, p = rng.choice(EMAIL_RECIPIENTS), rng.choice(EMAIL_PURPOSES)
    text = rng.choice([f"Write an email to {r} {p}.", f"Help me write a short message to {r} {p}.",
                       f"Draft a polite email to {r} {p}."])
    return text, f"{r}|{p}", "email", False


def _promo(rng: random.Random) -> Task:
    x = rng.choice(PRODUCTS)
    return rng.choice(WRITING_EXTRAS).format(x=x), x, "write", False


def _code(rng: random.Random) -> Task:
    lang, task = rng.choice(LANGUAGES), rng.choice(CODE_TASKS)
    text = rng.choice([f"Write a {lang} function that {task}.", f"Show me {lang} code that {task}.",
                       f"Implement a function in {lang} which {task}. Include a short example of using it.",
                       f"How would you write a program in {lang} that {task}?",
                       f"Can you write {lang} code that {task}? Keep it simple.", f"I need a {lang} snippet that {task}."])
    return text, task, "code", False


def _sql_shell(rng: random.Random) -> Task:
    if rng.random() < 0.5:
        task = rng.choice(SQL_TASKS)
        return rng.choice([f"Write an SQL query that {task}.", f"How do I write a SQL query that {task}?"]), task, "code", False
    task = rng.choice(SHELL_TASKS)
    return rng.choice([f"How do I {task} from the Linux command line?", f"What shell command would {task}?",
                       f"Give me a bash one-liner to {task}."]), task, "code", False


def _code_concept(rng: random.Random) -> Task:
    c = rng.choice(CODE_CONCEPTS)
    text = rng.choice([f"Explain {c}.", f"Can you explain {c} with a small example?", f"In simple words, can you explain {c}?",
                       f"I'm learning to program. Can you tell me {c}?", f"Explain {c} to a beginner."])
    return text, c, "explain", True


def _code_snippet(rng: random.Random) -> Task:
    lang, code = rng.choice(CODE_SNIPPETS)
    ask = rng.choice(["What does this {l} code do?", "Is there a bug in this {l} code?", "Can you explain this {l} snippet line by line?",
                      "How could this {l} code be improved?", "What will this {l} code print or return, and why?"])
    return f"{ask.format(l=lang)}\n\n```\n{code}\n```", code, "code", False


def _regex(rng: random.Random) -> Task:
    r = rng.choice(REGEXES)
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
    thing, n = rng.choice(LIST_THINGS), rng.randint(3, 10)
    text = rng.choice([f"List {n} {thing}.", f"Give me {n} {thing}.", f"What are some {thing}?", f"Can you name {n} {thing}?",
                       f"Make a list of {thing}.", f"I need {n} {thing}, with a short note on each."])
    return text, thing, "list", True


def _rewrite(rng: random.Random) -> Task:
    s, op = rng.choice(SENTENCES), rng.choice(REWRITE_OPS)
    return (f"{op} {s}" if rng.random() < 0.6 else f"{op}\n\n{s}"), s, "text", False


def _passage(rng: random.Random) -> Task:
    p, op = rng.choice(PASSAGES), rng.choice(PASSAGE_OPS)
    return rng.choice([f"{op}\n\n{p}", f"{p}\n\n{op}"]), p[:60], "text", False


def _classify(rng: random.Random) -> Task:
    k = rng.randrange(5)
    if k == 0:
        r = rng.choice(REVIEWS)
        return rng.choice([f"Classify the sentiment of this review as positive, negative or neutral: \"{r}\"",
                           f"Is this review positive or negative? {r}", f"Rate the sentiment of this review from 1 to 5 and explain: {r}"]), r, "text", False
    if k == 1:
        h = rng.choice(HEADLINES)
        return f"Which category fits this headline best: {HEADLINE_LABELS}?\n\"{h}\"", h, "text", False
    if k == 2:
        s = rng.choice(STATEMENTS)
        return rng.choice([f"Is this a fact or an opinion? \"{s}\"", f"Fact or opinion: {s} Explain briefly."]), s, "text", False
    if k == 3:
        o = rng.choice(ODD_ONE_OUT)
        return f"Which is the odd one out, and why: {o}?", o, "text", False
    m = rng.choice(SPAM_MESSAGES)
    return rng.choice([f"Is this message spam? \"{m}\"", f"Should I trust this message? {m}"]), m, "text", False


def _brainstorm(rng: random.Random) -> Task:
    x, n = rng.choice(BRAINSTORM), rng.randint(3, 12)
    text = rng.choice([f"Brainstorm {n} {x}.", f"Give me some {x}.", f"I need ideas: {x}.", f"Come up with {n} {x}.",
                       f"Help me think of {x}."])
    return text, x, "list", False


def _trivia(rng: random.Random) -> Task:
    q = rng.choice(TRIVIA)
    return q, q, "general", True


def _howto(rng: random.Random) -> Task:
    h = rng.choice(HOWTO)
    text = rng.choice([f"How do I {h}?", f"What's the best way to {h}?", f"Can you explain how to {h}?",
                       f"Give me step-by-step instructions to {h}.", f"I want to {h}. Where do I start?", f"Any tips on how to {h}?"])
    return text, h, "howto", True


def _advice(rng: random.Random) -> Task:
    s = rng.choice(ADVICE)
    text = rng.choice([f"{s[0].upper()}{s[1:]}. What should I do?", f"I need some advice: {s}.", f"{s[0].upper()}{s[1:]}. Any advice?",
                       f"What would you do if {_second_person(s)}?",
                       f"{s[0].upper()}{s[1:]}. How should I handle this?"])
    return text, s, "advice", True


def _second_person(s: str) -> str:
    for a, b in (("I'm ", "you're "), ("I ", "you "), ("my ", "your "), (" me ", " you ")):
        s = s.replace(a, b)
    return s


def _compare(rng: random.Random) -> Task:
    a, b = rng.choice(PAIRS)
    text = rng.choice([f"Compare {a} and {b}.", f"What is the difference between {a} and {b}?", f"{a[0].upper()}{a[1:]} or {b}: which is better?",
                       f"What are the main differences between {a} and {b}?", f"How do {a} and {b} compare?"])
    return text, f"{a}|{b}", "compare", True


def _define(rng: random.Random) -> Task:
    w = rng.choice(WORDS)
    return rng.choice(WORD_OPS).format(w=w), w, "general", False


def _plan(rng: random.Random) -> Task:
    if rng.random() < 0.5:
        city, n = rng.choice(CITIES), rng.randint(2, 6)
        return rng.choice(PLANS).format(city=city, n=n), city, "plan", False
    tpl = rng.choice(ROUTINES)
    fill = {"diet": rng.choice(DIETS), "exam": rng.choice(EXAMS), "goal": rng.choice(GOALS), "who": rng.choice(WHO),
            "n": rng.randint(2, 8)}
    text = tpl.format(**fill)
    return text, text, "plan", False


def _cook(rng: random.Random) -> Task:
    if rng.random() < 0.6:
        d = rng.choice(DISHES)
        return rng.choice([f"How do I make {d}?", f"Give me a simple recipe for {d}.", f"What do I need to make {d}?",
                           f"What's the secret to great {d}?"]), d, "cook", True
    i = rng.choice(INGREDIENTS)
    return rng.choice([f"What can I cook with {i}?", f"I only have {i} at home. What should I make for dinner?"]), i, "cook", False


def _pros_cons(rng: random.Random) -> Task:
    x = rng.choice(PROS_CONS)
    return rng.choice([f"What are the pros and cons of {x}?", f"Give me arguments for and against {x}.", f"Is {x} a good idea?",
                       f"Write a balanced paragraph about {x}."]), x, "compare", True


def _fun(rng: random.Random) -> Task:
    x = rng.choice(FUN_THINGS)
    return rng.choice(FUN).format(x=x), x, "general", False


#: (task, weight): roughly how often each appears.
TASKS: list[tuple[Callable[[random.Random], Task], float]] = [
    (_explain, 14), (_write, 8), (_email, 4), (_promo, 2), (_code, 9), (_sql_shell, 3), (_code_concept, 4),
    (_code_snippet, 3), (_regex, 1), (_math, 9), (_list, 6), (_rewrite, 5), (_passage, 5), (_classify, 5),
    (_brainstorm, 4), (_trivia, 6), (_howto, 6), (_advice, 5), (_compare, 4), (_define, 3), (_plan, 3),
    (_cook, 3), (_pros_cons, 3), (_fun, 3),
]

_PREFIXES = ["Hi! ", "Hello, ", "Can you help me? ", "Please help: ", "Hey, "]
_QUESTION_PREFIXES = ["Quick question: ", "I'm curious: "]
_SUFFIXES = [" Keep it brief.", " Please be concise.", " Use bullet points.", " Answer in two or three sentences.",
             " Explain your reasoning.", " Thanks!", " Please keep it simple.", " Give an example too.",
             " Answer in under 100 words.", " Be detailed."]


#: First words that a greeting like "Hello, " may lower-case (never "I", names or code).
_LOWERABLE = {"What", "How", "Why", "Can", "Could", "Explain", "Give", "Write", "List", "Is", "Make", "Tell", "Describe",
              "Compare", "Help", "Create", "Plan", "Design", "Show", "Implement", "Brainstorm", "Come", "Teach", "Which",
              "Where", "Should", "Any", "Use", "Convert", "Solve", "Compute", "Simplify", "Find", "Draft", "Compose"}


def _style(rng: random.Random, text: str, suffix_ok: bool) -> str:
    if rng.random() < 0.15 and len(text.split("\n", 1)[0]) < 120:  # not in front of a passage
        prefix = rng.choice(_PREFIXES + (_QUESTION_PREFIXES if text.endswith("?") else []))
        lower = prefix.endswith(", ") and text.split(" ", 1)[0] in _LOWERABLE
        text = prefix + (text[0].lower() + text[1:] if lower else text)
    if suffix_ok and rng.random() < 0.3:
        text += rng.choice(_SUFFIXES)
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
            messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        messages.append({"role": "user", "content": text})
        turns = rng.random()
        follow = FOLLOW_UPS[follow_kind] + FOLLOW_UPS["general"][:2]
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
