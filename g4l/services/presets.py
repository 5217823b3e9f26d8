"""terry's presets: the 33 styles a transform can move audio toward.

The names are the clients' (the gary4live device and gary4juce list the first 32 in this
order; ``synth_ambient`` is served but not in their menus); the text prompt of each is
ours, describing the style the name says. Every preset edits with the same settings
(MelodyFlow's released ones): ``flowstep`` 0.12, euler 25 steps, midpoint 64.

No torch here: the web side lists and validates presets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from g4l.engine.base import EDIT_SOLVER_STEPS

#: How far back an edit inverts its input when the request names no flowstep.
DEFAULT_FLOWSTEP = 0.12
#: The solver an edit uses when the request names none.
DEFAULT_SOLVER = "euler"
#: The preset the device selects first (and gary4juce sends beside a custom prompt).
DEFAULT_VARIATION = "accordion_folk"


@dataclass(frozen=True)
class Preset:
    """One style: its name (what clients send as ``variation``) and our text prompt."""

    name: str
    text: str
    flowstep: float = DEFAULT_FLOWSTEP

    def document(self) -> dict[str, Any]:
        """The preset as ``GET /variations`` lists it."""
        return {"name": self.name, "text": self.text, "flowstep": self.flowstep,
                "steps": dict(EDIT_SOLVER_STEPS), "solver": DEFAULT_SOLVER}


_TEXTS: tuple[tuple[str, str], ...] = (
    ("accordion_folk", "a warm folk tune led by a breathy accordion, with light hand percussion and a lilting "
                       "village-dance feel"),
    ("banjo_bluegrass", "fast bluegrass picking on a bright five-string banjo, with fiddle and upright bass "
                        "driving a front-porch rhythm"),
    ("piano_classical", "an expressive solo grand piano in a romantic classical style, with rich voicings and "
                        "gentle rubato"),
    ("celtic", "a lively celtic reel with tin whistle, fiddle and bodhran over a droning harp"),
    ("strings_quartet", "an intimate string quartet, two violins, viola and cello playing warm interlocking "
                        "lines with bowed sustain"),
    ("synth_retro", "vintage analog synthesizers from the early eighties, detuned saw leads, warm pads and "
                    "a bouncy arpeggio"),
    ("synth_modern", "polished modern synth pop production, crisp layered synths, wide stereo pads and "
                     "punchy electronic drums"),
    ("synth_edm", "a festival electronic dance track with a supersaw lead, side-chained chords and a "
                  "four-on-the-floor kick"),
    ("lofi_chill", "relaxed lo-fi hip hop with a dusty electric piano, vinyl crackle, mellow bass and lazy "
                   "swung drums"),
    ("synth_bass", "a deep growling analog synth bass line carrying the groove, with a filter that opens "
                   "and closes"),
    ("rock_band", "a full rock band, overdriven electric guitars, solid bass guitar and hard-hitting live "
                  "drums in a rehearsal room"),
    ("cinematic_epic", "an epic film score with soaring orchestral strings, big brass hits, choir and "
                       "thundering taiko drums"),
    ("retro_rpg", "a nostalgic sixteen-bit role-playing game soundtrack, sampled flutes, harp arpeggios and "
                  "soft synth strings"),
    ("chiptune", "eight-bit chiptune from a handheld console, square-wave melody, triangle bass and noise "
                 "channel drums"),
    ("steel_drums", "sunny caribbean steel pans playing a bright calypso melody over light island "
                    "percussion"),
    ("gamelan_fusion", "balinese gamelan metallophones and gongs in shimmering interlocking patterns, fused "
                       "with a modern electronic groove"),
    ("music_box", "a delicate wind-up music box with tinkling metal tines, slightly out of tune, in a quiet "
                  "room"),
    ("trap_808", "a dark trap beat with booming 808 bass, rapid hi-hat rolls and a hard snappy clap"),
    ("lo_fi_drums", "a dusty lo-fi drum loop, muffled kick, soft brushed snare and tape-saturated hats with "
                    "a loose swing"),
    ("boom_bap", "classic nineties boom bap hip hop, punchy sampled kick and snare, chopped soul sample and "
                 "a walking bass"),
    ("percussion_ensemble", "a large acoustic percussion ensemble, congas, djembes, shakers and frame drums "
                            "in layered polyrhythms"),
    ("future_bass", "future bass with lush detuned chord stabs, pitched vocal chops, wobbling sidechain "
                    "swells and crisp trap drums"),
    ("synthwave_retro", "a nostalgic synthwave night drive, gated reverb drums, pulsing bass arpeggio and "
                        "shimmering neon pads"),
    ("melodic_techno", "hypnotic melodic techno, a rolling bass line, evolving minor-key synth melody and a "
                       "steady driving kick"),
    ("dubstep_wobble", "heavy dubstep with a wobbling modulated bass, half-time drums and a massive sub "
                       "drop"),
    ("glitch_hop", "glitch hop with stuttering chopped samples, crunchy bit-crushed drums and a funky "
                   "mid-tempo groove"),
    ("digital_disruption", "harsh digital textures, buffer stutters, data-corruption clicks and abrupt "
                           "cut-ups over a broken beat"),
    ("circuit_bent", "circuit-bent toy electronics, glitchy pitch-warped bleeps, crackling shorts and "
                     "unstable lo-fi tones"),
    ("orchestral_glitch", "an orchestra sliced by digital glitches, strings and woodwinds stuttering and "
                          "reversed over electronic beats"),
    ("vapor_drums", "vaporwave drums, slowed-down reverb-drenched beats, hazy chorus and a dreamy "
                    "eighties mall atmosphere"),
    ("industrial_textures", "industrial noise textures, clanging metal, distorted machine rhythms and a "
                            "grinding factory pulse"),
    ("jungle_breaks", "fast jungle with chopped amen breakbeats, deep rolling reese bass and ragga-style "
                      "stabs"),
    ("synth_ambient", "a slow ambient soundscape of evolving synthesizer pads, soft drones and distant "
                      "shimmering echoes"),
)

#: Every preset, by name, in the clients' order.
PRESETS: dict[str, Preset] = {name: Preset(name, text) for name, text in _TEXTS}


def get(name: str) -> Preset | None:
    """The preset called ``name`` (exactly as the clients spell it), or ``None``."""
    return PRESETS.get(name)


def listing() -> dict[str, Any]:
    """``GET /variations``: every preset (name, text, defaults) and the default one."""
    return {"variations": [p.document() for p in PRESETS.values()], "default": DEFAULT_VARIATION,
            "count": len(PRESETS), "defaults": {"flowstep": DEFAULT_FLOWSTEP, "solver": DEFAULT_SOLVER,
                                                "steps": dict(EDIT_SOLVER_STEPS)}}
