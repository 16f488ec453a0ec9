"""The named arms of the deciding comparison and the ablations, without torch.

Each arm is a set of overrides of an ``unlearn.UnlearnConfig``: what ranks the channels
(``scores``), which end of the ranking is pruned (``direction``), over which layers the cut
is made (``scope``) and which reading of Eq. 7's IDF is used (``idf_threshold``: "class" is
Eq. 7 as printed, "channel" the authors' code's). ``fedunlearn_lib.unlearn`` re-exports
``ARMS``; the workflow (Snakefile) imports it from here so that parsing it needs no torch.
"""

ARMS: dict[str, dict[str, str]] = {
    "none": {"scores": "none"},
    "random": {"scores": "random", "direction": "highest"},
    "l1": {"scores": "l1", "direction": "lowest", "scope": "layer"},  # Li et al. (2017)
    "l1-global": {"scores": "l1", "direction": "lowest", "scope": "global"},
    "tfidf-highest": {"scores": "tfidf", "direction": "highest", "idf_threshold": "class"},
    "tfidf-lowest": {"scores": "tfidf", "direction": "lowest", "idf_threshold": "class"},
    "tfidf-highest-channel": {"scores": "tfidf", "direction": "highest",
                              "idf_threshold": "channel"},
    "tfidf-lowest-channel": {"scores": "tfidf", "direction": "lowest",
                             "idf_threshold": "channel"},
}
