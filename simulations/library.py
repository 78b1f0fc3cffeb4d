"""The scenario library: what ``cityops demo --scenario NAME`` can play, and what it shows.

Each entry names a scenario of ``simulations.scenarios.SCENARIOS`` and says, in English
and Chinese, what happens in the simulated city and what the operations center should
show: which sensors alarm, which incidents open and roughly how many, which citizen
reports come in and how the urban brain links them. The places and counts are those of
the default demo city, Shanghai (2,000 sensors, seed 42); a city of another size scales
them. In the small generated city the tests use, the rainstorm floods its two riverside
districts (Huangpu and Hongkou) and the counts are two to three times higher, its
sensors being all in six central districts.

Examples
--------
>>> [e.name for e in list_scenarios()][:3]
['baseline', 'rainstorm', 'air_pollution']
>>> get_entry("festival").timeline
Timeline(start_s=30.0, peak_s=150.0, end_s=630.0)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from simulations.scenarios import SCENARIOS, Scenario, Timeline

Language = Literal["en", "zh"]


@dataclass(frozen=True, slots=True)
class ScenarioEntry:
    """One scenario of the library, described for the demo's audience."""

    name: str
    title_en: str
    title_zh: str
    description_en: str
    description_zh: str
    outcome_en: str
    outcome_zh: str

    def build(self, seed: int = 0) -> Scenario:
        """The scenario itself, seeded."""
        return SCENARIOS[self.name](seed)

    @property
    def timeline(self) -> Timeline | None:
        """Start, peak and end in demo seconds (None: nothing happens, an ordinary day)."""
        timeline: Timeline | None = getattr(self.build(), "timeline", None)
        return timeline

    @property
    def params(self) -> dict[str, Any]:
        """The scenario's parameters and their defaults (the seed left out)."""
        scenario = self.build()
        if not dataclasses.is_dataclass(scenario):
            return {}
        return {
            f.name: getattr(scenario, f.name)
            for f in dataclasses.fields(scenario)
            if f.name != "seed"
        }

    def title(self, lang: Language = "en") -> str:
        """The title in ``lang``."""
        return self.title_zh if lang == "zh" else self.title_en

    def description(self, lang: Language = "en") -> str:
        """The one-paragraph description in ``lang``."""
        return self.description_zh if lang == "zh" else self.description_en

    def outcome(self, lang: Language = "en") -> str:
        """What the operations center should show, in ``lang``."""
        return self.outcome_zh if lang == "zh" else self.outcome_en


_ENTRIES: tuple[ScenarioEntry, ...] = (
    ScenarioEntry(
        name="baseline",
        title_en="An ordinary day",
        title_zh="平常的一天",
        description_en=(
            "Every sensor reads its normal level with a little noise, batteries drain "
            "slowly, and citizens file the everyday mix of 12345 / Open311 reports "
            "(parking, noise, rubbish, street lights...) from anywhere in the city, about "
            "one every five seconds."
        ),
        description_zh=(
            "所有传感器读数在正常水平附近小幅波动，电池缓慢耗电；市民从全市各处通过 12345 "
            "热线和 Open311 提交日常诉求（违停、噪声、垃圾、路灯等），大约每五秒一件。"
        ),
        outcome_en=(
            "No sensor alarm and no sensor incident. Service cases trickle in and are "
            "assigned to grid cells and departments; the few just outside the city are "
            "rejected. The urban brain rarely has anything to link."
        ),
        outcome_zh=(
            "没有传感器告警，也没有传感器事件。服务工单陆续进入，按网格和部门派遣；少数位于"
            "城市边界外的诉求被退回。城市大脑几乎没有需要关联的内容。"
        ),
    ),
    ScenarioEntry(
        name="rainstorm",
        title_en="Rainstorm flooding",
        title_zh="暴雨内涝",
        description_en=(
            "A rainstorm floods the streets along the Huangpu river. From 10 s the water "
            "at every water-level sensor within 1.5 km of the river (in Pudong, Yangpu, "
            "Xuhui, Huangpu, Minhang and Hongkou) rises for 40 s to 55-90 cm, stays for "
            "four minutes and recedes over two; the rest of the city stays dry. "
            "Residents near the flooded places call the hotline or use Open311 about "
            "flooding (with the depth they see) and blocked drains, more where the water "
            "is deeper."
        ),
        description_zh=(
            "暴雨使黄浦江沿岸道路积水。从第 10 秒起，距黄浦江 1.5 公里以内（浦东、杨浦、徐汇、"
            "黄浦、闵行、虹口）所有积水监测点的水位在 40 秒内升至 55-90 厘米，持续四分钟后在"
            "两分钟内退去；其他区域不受影响。积水点附近的市民通过热线或 Open311 反映道路积水"
            "（附所见水深）和雨水井堵塞，水越深来电越多。"
        ),
        outcome_en=(
            "About 70 water-level alarms along the Huangpu, most in Pudong, Yangpu, Xuhui "
            "and Huangpu (major above 50 cm, critical above 80 cm), each opening a "
            "flooding incident for the district's water department; none elsewhere. About "
            "100 flooding and blocked-drain reports come in 50-250 m from the flooded "
            "sensors: the urban brain marks them confirmed by "
            "sensors and links them to the nearest flooding incident (300 m); reports made "
            "before an alarm are adopted by it and any incident they had opened together "
            "is merged into the alarm's. Incidents with three linked reports are raised "
            "one severity step. As the water recedes the alarms clear."
        ),
        outcome_zh=(
            "黄浦江沿岸约 70 个积水告警，多数在浦东、杨浦、徐汇和黄浦（超过 50 厘米为重大，"
            "超过 80 厘米为特别重大），每个告警为所在区水务部门生成一个积水事件；其他地方没有。"
            "距积水点 50-250 米处约有 100 件积水和雨水井堵塞诉求：城市大脑将其标记为传感器"
            "已证实，并关联到 300 米内最近的积水事件；告警之前提交的诉求由该告警事件收编，"
            "诉求聚合生成的事件被合并。关联满三件诉求的事件升高一级。积水退去后告警解除。"
        ),
    ),
    ScenarioEntry(
        name="air_pollution",
        title_en="Air-pollution episode",
        title_zh="大气污染过程",
        description_en=(
            "A haze plume drifts across the north of the city on a north-westerly wind: "
            "it reaches Putuo at 20 s, Jing'an at 65 s and Hongkou at 110 s. In each, "
            "PM2.5 at every sensor rises over a minute to 130-260 ug/m3, holds for five "
            "minutes and clears over two; the rest of the city keeps its ordinary "
            "35 ug/m3. Residents under the plume call about haze, smoke and stinging "
            "air, more where the air is worse."
        ),
        description_zh=(
            "一团雾霾随西北风飘过城市北部：第 20 秒到达普陀区，第 65 秒到达静安区，第 110 秒"
            "到达虹口区。各区所有 PM2.5 监测点在一分钟内升至 130-260 微克/立方米，持续五分钟"
            "后在两分钟内消散；其他各区保持平常的 35 微克/立方米左右。受影响区域的市民反映"
            "雾霾、烟味和空气刺眼，空气越差来电越多。"
        ),
        outcome_en=(
            "About 70 PM2.5 alarms in Putuo, Jing'an and Hongkou, district after "
            "district (minor above 115, mostly major above 150, a few critical above "
            "250), each an air-pollution incident for the environment department; none "
            "in the other districts. About 50 air-pollution reports come in "
            "100-800 m from alarming sensors: confirmed by sensors and linked to the "
            "nearest air-pollution incident (1 km); incidents with three linked reports "
            "are raised one severity step. The alarms clear as the plume leaves."
        ),
        outcome_zh=(
            "普陀、静安、虹口三区依次出现约 70 个 PM2.5 告警（超过 115 为较大，多数超过 150 "
            "为重大，少数超过 250 为特别重大），每个告警为生态环境部门生成一个大气污染事件；"
            "其他各区没有告警。距告警监测点 100-800 米处约有 50 件大气污染诉求：经"
            "传感器证实，并关联到 1 公里内最近的大气污染事件；关联满三件诉求的事件升高一级。"
            "雾霾离开后告警解除。"
        ),
    ),
    ScenarioEntry(
        name="streetlight_outage",
        title_en="Street-light outage across a district",
        title_zh="整区路灯停电",
        description_en=(
            "A feeder fault darkens Putuo: from 15 s its street lights go out section by "
            "section within 30 s, their power meters reading 0-2 W (the controller's "
            "standby) instead of about 100 W. They stay dark for five minutes and come "
            "back within 30 s. Residents in the dark streets report the lights out, "
            "many saying the whole street is dark; lights elsewhere burn normally."
        ),
        description_zh=(
            "供电线路故障使普陀区路灯熄灭：从第 15 秒起，30 秒内各路段路灯依次熄灭，功率读数"
            "从约 100 瓦降到 0-2 瓦（控制器待机）。熄灭持续五分钟，随后 30 秒内恢复。黑暗街道"
            "上的市民反映路灯不亮，很多人说整条街都黑了；其他区的路灯正常。"
        ),
        outcome_en=(
            "About 35 street-light alarms, all in Putuo (minor, power below 10 W), each a "
            "street-light-out incident for the district's lighting office; none elsewhere. "
            "About 40 street-light-out reports come in 20-90 m from dark lights: confirmed "
            "by sensors and linked to the nearest street-light incident (100 m); incidents "
            "with three linked reports are raised from minor to major. When power returns "
            "(above 50 W) the alarms clear."
        ),
        outcome_zh=(
            "约 35 个路灯告警，全部在普陀区（功率低于 10 瓦，较大），每个告警为区路灯管理所"
            "生成一个路灯不亮事件；其他区没有。距熄灭路灯 20-90 米处约有 40 件路灯不亮诉求："
            "经传感器证实，并关联到 100 米内最近的路灯事件；关联满三件诉求的事件由较大升为"
            "重大。恢复供电（功率超过 50 瓦）后告警解除。"
        ),
    ),
    ScenarioEntry(
        name="manhole_theft",
        title_en="Manhole-cover thefts",
        title_zh="井盖被盗",
        description_en=(
            "Thieves take manhole covers at a few scattered places over five minutes: "
            "about 1.5 % of the monitored manholes, anywhere in the city, each at its own "
            "moment from 15 s on. The tilt sensor of a taken cover reads 17-88 degrees "
            "instead of about 1; the cover is replaced five minutes later. Passers-by "
            "report the open holes (a few a damaged cover) within 40 m of each."
        ),
        description_zh=(
            "窃贼在五分钟内于城市各处零星盗走井盖：约占受监测井盖的 1.5%，从第 15 秒起各自在"
            "不同时刻发生。被盗井盖的倾角传感器读数从约 1 度变为 17-88 度；五分钟后井盖被补装。"
            "路人在每处 40 米内反映井盖缺失（少数反映井盖破损）。"
        ),
        outcome_en=(
            "About 6 manhole-cover alarms, one after another at scattered places (major "
            "above 15 degrees, most critical above 45), each a manhole-cover incident for "
            "the roads office of its district. About 40 missing- or damaged-cover reports "
            "come in within 40 m of the taken covers: confirmed by sensors and linked to "
            "their incident (50 m); a major incident with three linked reports is raised "
            "to critical. The alarms clear as the covers are replaced."
        ),
        outcome_zh=(
            "城市各处依次出现约 6 个井盖告警（倾角超过 15 度为重大，多数超过 45 度为特别重大），"
            "每个告警为所在区道路市政管理所生成一个井盖事件。被盗井盖 40 米内约有 40 件井盖"
            "缺失或破损诉求：经传感器证实，并关联到 50 米内的事件；关联满三件诉求的重大事件"
            "升为特别重大。井盖补装后告警解除。"
        ),
    ),
    ScenarioEntry(
        name="festival",
        title_en="Festival crowd complaints",
        title_zh="节庆活动人群投诉",
        description_en=(
            "A festival at Shanghai Stadium in Xuhui draws a crowd from 30 s: it builds "
            "for two minutes, stays six and leaves over two. No sensor sees it (the city "
            "has no noise or crowd sensors), so every sensor reads an ordinary day. "
            "Residents within 400 m of the venue call about loud music, overflowing bins, "
            "street stalls, cars on the pavement, heaps of shared bikes and litter."
        ),
        description_zh=(
            "徐汇区上海体育场举办节庆活动，从第 30 秒起人群聚集：两分钟内聚满，持续六分钟，"
            "两分钟内散去。没有传感器能看到（城市没有噪声或人流传感器），所有传感器读数与平"
            "日相同。活动场地 400 米内的居民反映音乐噪声、垃圾桶满溢、占道摆摊、车辆占用人"
            "行道、共享单车堆放和路面垃圾。"
        ),
        outcome_en=(
            "No sensor alarm. About 75 reports cluster within 400 m of the venue (about "
            "40 % noise, the rest bins, vending, parking, bikes and litter), each a "
            "service case routed by category to urban management, sanitation or the "
            "traffic police of Xuhui. The correlation rules' crowd rule (core/correlation."
            "yaml v2: these categories within 500 m and 2 h, five reports) makes the fifth "
            "report open one citizen-reports incident, crowd_disturbance, with the reports "
            "near it linked; later calls join it, so the operations center sees one crowd, "
            "not 75 complaints."
        ),
        outcome_zh=(
            "没有传感器告警。活动场地 400 米内集中出现约 75 件诉求（约 40% 为噪声，其余为垃圾"
            "桶、占道经营、违停、共享单车和路面垃圾），每件按类别派给徐汇区城管执法局、绿化"
            "市容局或交警支队。关联规则中的人群规则（core/brain/correlation.yaml 第 2 版：这些类别"
            "在 500 米、2 小时内满 5 件）使第 5 件诉求生成一个市民诉求事件 crowd_disturbance，"
            "附近诉求一并关联；之后的来电加入该事件，指挥中心看到的是一处人群聚集，而不是 75 "
            "件投诉。"
        ),
    ),
)

LIBRARY: dict[str, ScenarioEntry] = {e.name: e for e in _ENTRIES}


def list_scenarios() -> list[ScenarioEntry]:
    """Every scenario of the library, in the order the demo lists them."""
    return list(_ENTRIES)


def get_entry(name: str) -> ScenarioEntry:
    """The library entry of ``name``; a clear error listing the names otherwise."""
    try:
        return LIBRARY[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; choose one of {', '.join(LIBRARY)}") from None


def scenario_table(lang: Language = "en") -> str:
    """A Markdown table of the library (for ``--list-scenarios`` and the README).

    Examples
    --------
    >>> print(scenario_table().splitlines()[0])
    | scenario | title | start / peak / end (s) | description | expected outcome |
    """
    head = (
        "| scenario | title | start / peak / end (s) | description | expected outcome |"
        if lang == "en"
        else "| 场景 | 名称 | 开始 / 高峰 / 结束（秒） | 说明 | 预期结果 |"
    )
    rows = [head, "|---|---|---|---|---|"]
    for entry in _ENTRIES:
        tl = entry.timeline
        when = "-" if tl is None else f"{tl.start_s:g} / {tl.peak_s:g} / {tl.end_s:g}"
        cells = (
            f"`{entry.name}`",
            entry.title(lang),
            when,
            entry.description(lang),
            entry.outcome(lang),
        )
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)
