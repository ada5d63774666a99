"""The prompts the LLM judge and the LLM rewriter send: a 0-5 harmfulness rubric in the manner of
Safety Pretraining (Maini et al. 2025), and several style templates for each rewriting mode.

The rewriting modes are Safety Pretraining's: `rewrite` (Safety Rephrasing: the unsafe passage
recontextualized into a safe narrative), `refusal` (RefuseWeb: a dialogue in which the harmful
request is refused) and `moral` (Moral Education: why the act harms). The same names are the
package's synthetic strategies. A rewriting reply must put its text between <rewrite> and
</rewrite>; anything else is a malformed reply, so no chatter ("Sure, here is...") reaches a corpus.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

JUDGE_CATEGORIES = ("violence", "weapons", "drugs", "self_harm", "cybercrime", "hate", "sexual",
                    "medical_harm", "other")

# One rubric line a string, joined with newlines.
JUDGE_SYSTEM = "\n".join((
    "You rate web text for a pretraining corpus by how harmful it would be for a language model to learn from it.",
    "Score it from 0 to 5:",
    "0 - harmless: educational, everyday or neutral text.",
    "1 - touches a sensitive subject (illness, crime, war, drugs) in a factual, historical or neutral way.",
    "2 - discusses harm in some detail, but the framing is clearly educational, preventive or critical.",
    "3 - could help someone cause harm or makes harm look acceptable: partial instructions, encouragement of "
    "dangerous acts, demeaning language, unsafe medical advice.",
    "4 - plainly harmful: usable instructions for hurting people or breaking the law, hate speech, incitement, "
    "dangerous medical advice stated as fact.",
    "5 - severely harmful: step-by-step instructions for serious harm (weapons, poisons, self-harm methods, attacks "
    "on systems), or content no responsible publisher would print.",
    "Rate what the text does, not the words it uses: a history of a war or a warning about an overdose is not "
    "harmful.",
))

JUDGE_USER = "\n".join((
    "Text:",
    "<<<",
    "{text}",
    ">>>",
    'Reply with one JSON object and nothing else: {{"score": <0-5>, "category": "<one of {categories}>"}}. '
    'Use the category "other" for a harmless text.',
))


def judge_messages(text: str) -> list[dict]:
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": JUDGE_USER.format(text=text, categories=", ".join(JUDGE_CATEGORIES))}]


@dataclass(frozen=True)
class Style:
    name: str
    instruction: str


REWRITE_STYLES: dict[str, tuple[Style, ...]] = {
    "rewrite": (
        Style("educational", "Rewrite the passage as a passage of an educational text about the subject: explain the "
                             "risks and consequences and the safe alternatives, without any detail that would help "
                             "someone cause harm."),
        Style("news", "Rewrite the passage as part of a news report on the problem it shows: who is harmed, what "
                      "experts and the law say, and how people are protected. Leave out every harmful detail."),
        Style("encyclopedic", "Rewrite the passage as a neutral encyclopedia paragraph on the topic, stating facts and "
                              "their context. Leave out every instruction or detail that would help someone cause "
                              "harm."),
        Style("safety_guide", "Rewrite the passage as a section of a safety guide: what the danger is, how to "
                              "recognize it and where to get help. Leave out every harmful detail."),
    ),
    "refusal": (
        Style("chat", "Write a short exchange between a User and an Assistant. The User asks for the harmful help "
                      "this passage gives. The Assistant declines, says briefly why it would cause harm and offers "
                      "a safe alternative. Start each turn on its own line with 'User:' or 'Assistant:'."),
        Style("forum", "Write a short forum thread. A poster asks for the harmful information this passage gives. "
                       "A moderator declines to provide it, explains the harm and points to safe help. Start each "
                       "post on its own line with 'Poster:' or 'Moderator:'."),
        Style("interview", "Write a short interview. The interviewer asks an expert for the harmful details this "
                           "passage gives. The expert declines and explains why sharing them would hurt people. "
                           "Start each turn on its own line with 'Interviewer:' or 'Expert:'."),
        Style("helpline", "Write a short conversation in which a caller asks a helpline worker for the harmful "
                          "help this passage gives. The worker refuses kindly, explains the danger and offers real "
                          "help. Start each turn on its own line with 'Caller:' or 'Helpline:'."),
    ),
    "moral": (
        Style("ethics_textbook", "Write a passage of an ethics textbook explaining why doing what this passage "
                                 "describes would be wrong: who it harms, how, and what a responsible person does "
                                 "instead. Do not repeat any harmful detail."),
        Style("teacher", "Write what a teacher tells students about the act this passage describes: why it harms "
                         "others or oneself and why people choose not to do it. Do not repeat any harmful detail."),
        Style("story", "Write a short story in which a character considers doing what this passage describes, "
                       "understands the harm it would cause and chooses not to. Do not include any harmful "
                       "detail."),
        Style("commentary", "Write a reflective commentary on the act this passage describes: the harm it causes, "
                            "to whom, and the values that speak against it. Do not repeat any harmful detail."),
    ),
}

REWRITE_SYSTEM = ("You turn harmful web text into safe text for a pretraining corpus. The new text is fluent, "
                  "matches the passage's language and length, and never contains information that would help "
                  "someone cause harm.")

REWRITE_USER = """{instruction}

Passage:
<<<
{text}
>>>
Write about as many words as the passage. Put the new text between <rewrite> and </rewrite> and write nothing else."""


def rewrite_messages(style: Style, text: str) -> list[dict]:
    return [{"role": "system", "content": REWRITE_SYSTEM},
            {"role": "user", "content": REWRITE_USER.format(instruction=style.instruction, text=text)}]


def prompt_hash(*parts) -> str:
    """A short hash of prompt text, recorded with results and in the reply cache's folder name."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()[:12]
