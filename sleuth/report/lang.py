"""The request's language: detected from its words (or script), and the report's fixed labels in it.

Detection is a small stop-word vote (no model download): enough to tell the languages whose labels are
translated here, and scripts (CJK, Cyrillic, Arabic...) by their characters. Unknown languages fall back to
English labels; the writer is still told to write in the detected language.
"""

from __future__ import annotations

import re

_STOP = {
    "en": "the of and to in is what how why which who a an for on with about are was report compare write".split(),
    "fr": "le la les des du de et est un une pour sur dans quels quelle quelles comment pourquoi rapport "
          "comparer sont qui au aux".split(),
    "de": "der die das und ist ein eine für mit über wie warum welche bericht vergleich sind den dem von zu".split(),
    "es": "el la los las de del y es un una para sobre con cómo por qué cuáles informe comparar son en".split(),
    "it": "il lo la gli le di del della e è un una per su con come perché quali rapporto confronta sono".split(),
    "pt": "o a os as de do da e é um uma para sobre com como por que quais relatório comparar são em".split(),
    "nl": "de het een en is van voor over met hoe waarom welke rapport vergelijk zijn in op".split(),
}

NAMES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian",
         "pt": "Portuguese", "nl": "Dutch", "zh": "Chinese", "ja": "Japanese", "ko": "Korean",
         "ru": "Russian", "ar": "Arabic"}

_SCRIPTS = [("ja", re.compile(r"[\u3040-\u30ff]")), ("ko", re.compile(r"[\uac00-\ud7af]")),
            ("zh", re.compile(r"[\u4e00-\u9fff]")), ("ru", re.compile(r"[\u0400-\u04ff]")),
            ("ar", re.compile(r"[\u0600-\u06ff]"))]


def detect(text: str) -> str:
    """ISO 639-1 code of the text's language; "en" when nothing else wins."""
    for code, rx in _SCRIPTS:
        if len(rx.findall(text)) >= 2:
            return code
    words = re.findall(r"[^\W\d_]+", text.lower())
    scores = {code: sum(w in stop for w in words) for code, stop in _STOP.items()}
    best = max(scores, key=lambda c: (scores[c], c == "en"))
    return best if scores[best] > scores["en"] else "en"


LABELS = {
    "en": {"references": "References", "sources": "Sources", "mindmap": "Mind map", "numbers": "Numbers found",
           "questions": "Research questions", "question": "Question", "finding": "Finding",
           "contents": "Contents", "unverified": "unverified", "value": "Value", "entity": "Subject",
           "source": "Source", "no_numbers": "No numbers were found in the verified text.",
           "cited_in": "cited in", "no_finding": "(no answer)", "summary": "About this report"},
    "fr": {"references": "Références", "sources": "Sources", "mindmap": "Carte mentale",
           "numbers": "Chiffres trouvés", "questions": "Questions de recherche", "question": "Question",
           "finding": "Résultat", "contents": "Sommaire", "unverified": "non vérifié", "value": "Valeur",
           "entity": "Sujet", "source": "Source", "no_numbers": "Aucun chiffre trouvé dans le texte vérifié.",
           "cited_in": "cité dans", "no_finding": "(pas de réponse)", "summary": "À propos de ce rapport"},
    "de": {"references": "Quellenverzeichnis", "sources": "Quellen", "mindmap": "Mindmap",
           "numbers": "Gefundene Zahlen", "questions": "Forschungsfragen", "question": "Frage",
           "finding": "Ergebnis", "contents": "Inhalt", "unverified": "nicht belegt", "value": "Wert",
           "entity": "Gegenstand", "source": "Quelle", "no_numbers": "Im belegten Text wurden keine Zahlen gefunden.",
           "cited_in": "zitiert in", "no_finding": "(keine Antwort)", "summary": "Über diesen Bericht"},
    "es": {"references": "Referencias", "sources": "Fuentes", "mindmap": "Mapa mental",
           "numbers": "Cifras encontradas", "questions": "Preguntas de investigación", "question": "Pregunta",
           "finding": "Hallazgo", "contents": "Índice", "unverified": "no verificado", "value": "Valor",
           "entity": "Tema", "source": "Fuente", "no_numbers": "No se encontraron cifras en el texto verificado.",
           "cited_in": "citado en", "no_finding": "(sin respuesta)", "summary": "Sobre este informe"},
}


def labels(code: str) -> dict[str, str]:
    return {**LABELS["en"], **LABELS.get(code, {})}


def name(code: str) -> str:
    return NAMES.get(code, code)
