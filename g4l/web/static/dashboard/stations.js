/* /stations: every station this operator's key may see, refreshed every 5 s. */
(function () {
  "use strict";
  var body = document.querySelector("#stations tbody");

  function row(st) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-station", st.station_id);
    var name = g4l.cell(tr, "");
    name.textContent = "";
    name.appendChild(g4l.link("/stations/" + encodeURIComponent(st.station_id) + "/dashboard",
                              st.name || st.station_id));
    g4l.cell(tr, st.status, "status");
    var state = g4l.cell(tr, "", "state");
    g4l.setState(state, g4l.state(st));
    g4l.cell(tr, g4l.duration(st.buffered_seconds), "num buffered");
    g4l.cell(tr, st.listeners, "num listeners");
    g4l.cell(tr, st.current_prompt, "prompt");
    var pages = g4l.cell(tr, "");
    pages.textContent = "";
    pages.appendChild(g4l.link("/stations/" + encodeURIComponent(st.station_id) + "/dashboard", "dashboard"));
    pages.appendChild(document.createTextNode(" · "));
    pages.appendChild(g4l.link("/stations/" + encodeURIComponent(st.station_id) + "/recordings", "recordings"));
    return tr;
  }

  g4l.every(5000, function () {
    return g4l.getJSON("/stations/list.json").then(function (data) {
      body.replaceChildren.apply(body, data.stations.map(row));
      g4l.$("none").hidden = data.stations.length > 0;
    });
  });
})();
