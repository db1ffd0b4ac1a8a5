// A botbuilder-js bot as shipped (CloudAdapter, anonymous: no app id, loopback only)
// that keeps its state in inline_state through the proxy. It reads the played-back bags
// from the incoming activity (botbuilder-js passes unknown fields of incoming activities
// through) and writes them under channelData.inlineState: when it POSTs a reply, the
// connector client serializes the activity against its mapper, which drops unknown
// top-level fields but keeps channelData as it is.
//
//     node bot.js --port 3978

'use strict';

const http = require('http');
const { CloudAdapter, ConfigurationBotFrameworkAuthentication } = require('botbuilder');

const adapter = new CloudAdapter(new ConfigurationBotFrameworkAuthentication({}));
adapter.onTurnError = async (context, error) => {
    console.error(`turn error: ${error.stack || error}`);
    throw error;
};

async function onTurn(context) {
    const activity = context.activity;
    if (activity.type !== 'message') return;
    const user = activity.botUserData || {};
    const conversation = activity.botConversationData || {};
    const userCount = (user.count || 0) + 1;
    const conversationCount = (conversation.count || 0) + 1;
    await context.sendActivity({
        type: 'message',
        text: `user ${userCount} conversation ${conversationCount}`,
        channelData: {
            inlineState: {
                botUserData: { ...user, count: userCount },
                botConversationData: { ...conversation, count: conversationCount },
            },
        },
    });
}

// Node's http objects, given the few methods CloudAdapter.process uses (as restify's).
function asResponse(res) {
    res.status = (code) => { res.statusCode = code; };
    res.header = (name, value) => { res.setHeader(name, value); };
    res.send = (body) => {
        if (body !== undefined) {
            res.setHeader('Content-Type', 'application/json');
            res.write(typeof body === 'string' ? body : JSON.stringify(body));
        }
    };
    return res;
}

const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
        try {
            req.body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        } catch (error) {
            res.statusCode = 400;
            res.end(`not JSON: ${error}`);
            return;
        }
        adapter.process(req, asResponse(res), onTurn).catch((error) => {
            console.error(`process failed: ${error.stack || error}`);
            if (!res.writableEnded) {
                res.statusCode = 500;
                res.end();
            }
        });
    });
});

const port = Number(process.argv[process.argv.indexOf('--port') + 1]);
server.listen(port, '127.0.0.1');
