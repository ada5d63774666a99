"""`safety_pretraining`: the Safety Pretraining recipe (Maini et al. 2025) as one name.

Rephrasing, RefuseWeb, Moral Education and harmfulness tags, composed in that order. Each rewriting
step takes its share of the unsafe documents still unsafe when it sees them (1/4, then 1/3 of the
remaining 3/4, then 1/2 of the remaining 1/2), so each of the four treatments covers about a
quarter of the unsafe documents and `tag` marks the quarter kept as they are.
"""

from medsafetyworld.strategies.registry import register_recipe

SAFETY_PRETRAINING = "rewrite(share=0.25)+refusal(share=0.3333)+moral(share=0.5)+tag"
register_recipe("safety_pretraining", SAFETY_PRETRAINING)
