// callcenter's test softphone: SIP.js (served from the harness's npm cache under /sipjs/) over
// the edge's WebSocket. Configured by the page's ?config= (JSON); it reports what happens to the
// harness (POST /event) and takes commands from it (GET /command, polled). Every SIP message sent
// and received is reported ("sip_in", "sip_out") so that tests assert on the signalling.
import { Inviter, Registerer, RegistererState, SessionState, UserAgent } from "/sipjs/index.js";

const config = JSON.parse(new URLSearchParams(location.search).get("config") || "{}");
const state = document.getElementById("state");
let session = null;

function report(kind, data = {}) {
  state.textContent = kind;
  return fetch("/event", { method: "POST", body: JSON.stringify({ kind, t: Date.now(), ...data }) })
    .catch(() => {});
}

function watch(s, role) {
  session = s;
  s.stateChange.addListener((st) => {
    report("session_" + st.toLowerCase(), { role });
    if (st === SessionState.Established) {
      const pc = s.sessionDescriptionHandler && s.sessionDescriptionHandler.peerConnection;
      if (pc) {
        const remote = document.getElementById("remote");
        const stream = new MediaStream();
        pc.getReceivers().forEach((r) => r.track && stream.addTrack(r.track));
        remote.srcObject = stream;
      }
    }
  });
}

const sdhOptions = { constraints: { audio: true, video: false } };
const ua = new UserAgent({
  uri: UserAgent.makeURI(config.aor),
  transportOptions: { server: config.server, traceSip: false },
  authorizationUsername: config.username || undefined,
  authorizationPassword: config.password || undefined,
  displayName: config.displayName || "browser",
  logBuiltinEnabled: false,
  sessionDescriptionHandlerFactoryOptions: {
    iceGatheringTimeout: 500,
    peerConnectionConfiguration: { iceServers: [] },
  },
  delegate: {
    onInvite(invitation) {
      report("invited", { from: invitation.remoteIdentity.uri.toString() });
      watch(invitation, "callee");
      if (config.autoAnswer) {
        invitation.accept({ sessionDescriptionHandlerOptions: sdhOptions })
          .catch((e) => report("error", { where: "accept", message: String(e) }));
      }
    },
  },
});

ua.start().then(() => {
  const transport = ua.transport;
  const send = transport.send.bind(transport);
  transport.send = (message) => { report("sip_out", { text: message }); return send(message); };
  const onMessage = transport.onMessage;
  transport.onMessage = (message) => { report("sip_in", { text: message }); onMessage(message); };
  report("connected");
  if (config.register) {
    const registerer = new Registerer(ua, { expires: config.expires || 300 });
    registerer.stateChange.addListener((st) => {
      report(st === RegistererState.Registered ? "registered" : "register_" + st.toLowerCase());
    });
    registerer.register({
      requestDelegate: {
        onReject(response) { report("register_rejected", { code: response.message.statusCode }); },
      },
    }).catch((e) => report("error", { where: "register", message: String(e) }));
  }
  if (config.call) {
    const inviter = new Inviter(ua, UserAgent.makeURI(config.call), { sessionDescriptionHandlerOptions: sdhOptions });
    watch(inviter, "caller");
    inviter.invite().catch((e) => report("error", { where: "invite", message: String(e) }));
  }
}).catch((e) => report("error", { where: "start", message: String(e) }));

async function poll() {
  for (;;) {
    let commands = [];
    try {
      commands = await (await fetch("/command")).json();
    } catch (e) {
      await new Promise((r) => setTimeout(r, 200));
      continue;
    }
    for (const c of commands) {
      try {
        if (c.name === "hangup" && session) {
          if (session.state === SessionState.Established) await session.bye();
          else if (session.cancel) await session.cancel();
          else await session.reject();
        } else if (c.name === "stop") {
          await ua.stop();
        }
        report("done", { name: c.name });
      } catch (e) {
        report("error", { where: c.name, message: String(e) });
      }
    }
  }
}
poll();
